"""gristmill_example: every non-empty line of a .txt file is one text record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gristmill import hookimpl
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES, Rejected, SourceType, Where
from gristmill.plugin.files import content_hash, is_compressed, line_ranges, lines


class LinesSource:
    def __init__(
        self,
        spec: str,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        byte_range: tuple[int, int | None, int] = (0, None, 1),
        **context: Any,  # what gristmill passes that this source does not use
    ):
        self.spec = spec
        self.max_record_bytes = max_record_bytes
        self.byte_range = byte_range  # (start, end, number of the first line)

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

    def split(self, pieces: int) -> list[LinesSource]:
        if is_compressed(self.spec) or self.byte_range != (0, None, 1):
            return [self]  # a compressed stream cannot seek; a piece is not split again
        return [
            LinesSource(self.spec, max_record_bytes=self.max_record_bytes, byte_range=piece)
            for piece in line_ranges(self.spec, pieces)
        ]

    def fingerprint(self) -> str:
        return content_hash(self.spec)


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="lines",
            description="plain text files, one record per non-empty line",
            suffixes=(".txt",),
            factory=LinesSource,
        )
    ]
