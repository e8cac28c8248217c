"""JSON sources: ``jsonl`` (one object per line) and ``json`` (an array of objects, or a stream of
objects such as JSON Lines saved with a ``.json`` name). Both read ``.gz``/``.zst`` transparently."""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import SourceType
from gristmill_jsonl.json_source import JsonSource
from gristmill_jsonl.jsonl_source import JsonlSource


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="jsonl",
            description="JSON Lines files: one JSON object per line (.jsonl, .ndjson; .gz/.zst)",
            suffixes=(".jsonl", ".ndjson"),
            factory=JsonlSource,
        ),
        SourceType(
            name="json",
            description="JSON files: an array of objects, or objects one after another (.json)",
            suffixes=(".json",),
            factory=JsonSource,
        ),
    ]
