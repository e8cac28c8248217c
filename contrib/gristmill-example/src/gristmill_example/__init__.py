"""gristmill_example: every non-empty line of a .lines file is one text record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gristmill import hookimpl
from gristmill.plugin.components import Rejected, SourceType, Where
from gristmill.plugin.files import LineSource, lines


class LinesSource(LineSource):
    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        start, end, first_line = self.byte_range
        for raw, index in lines(self.spec, max_bytes=self.max_record_bytes, start=start, end=end):
            where = Where(self.spec, first_line + index)
            if raw is None:  # longer than max_record_bytes: never held in memory
                message = f"the line is longer than {self.max_record_bytes:,} bytes"
                yield Rejected("too-large", message, where)
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                raw_text = raw.decode("utf-8", errors="replace")
                yield Rejected("not-utf8", "not UTF-8; re-encode the file", where, raw_text)
                continue
            if text.strip():
                yield {"text": text}, where


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="lines",
            description="plain text files, one record per non-empty line",
            suffixes=(".lines",),
            factory=LinesSource,
        )
    ]
