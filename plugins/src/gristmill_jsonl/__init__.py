"""The ``jsonl`` source: one JSON object per line of a ``.jsonl`` / ``.ndjson`` file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from gristmill import hookimpl
from gristmill.components import SourceType, Where
from gristmill.errors import DataError
from gristmill.manifest import fingerprint


class JsonlSource:
    def __init__(self, spec: str):
        self.spec = spec

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        with open(self.spec, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = Where(self.spec, number)
                try:
                    line = raw.rstrip(b"\r\n").decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"not UTF-8 (byte {exc.start + 1} of the line); re-encode the file as UTF-8",
                        where=str(where),
                    ) from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"malformed JSON at column {exc.colno}: {exc.msg}", where=str(where)
                    ) from None
                yield record, where

    def fingerprint(self) -> str:
        stat = os.stat(self.spec)
        return fingerprint([os.path.abspath(self.spec), stat.st_size, stat.st_mtime_ns])


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="jsonl",
            description="JSON Lines files: one JSON object per line",
            suffixes=(".jsonl", ".ndjson"),
            factory=JsonlSource,
        )
    ]
