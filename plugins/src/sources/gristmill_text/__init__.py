"""Plain text sources: ``text`` reads ``.txt`` and ``.md`` files (also ``.gz``/``.zst``), one
text record per file, paragraph or line, with optional cleaning and line deduplication."""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import SourceType
from gristmill_text.text_source import TextSource


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="text",
            description="plain text files: one text record per line, paragraph or file (.txt, .md)",
            suffixes=(".txt", ".md"),
            factory=TextSource,
            options={
                "unit": "a record per file, paragraph (blank-line separated) or line "
                "(default: line for .txt, file for .md)",
                "clean": "true, or a list of rules: control, trailing-space, blank-lines "
                "(default: false)",
                "dedup_lines": "drop a line already seen in the same file (default: false)",
            },
        )
    ]
