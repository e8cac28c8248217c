"""``json``: a top-level array of objects, or objects one after another, parsed as a stream.

The parser keeps only the value being decoded in memory (bounded by ``max_record_bytes``), so a
multi-gigabyte array exported from a notebook streams like JSON Lines does.
"""

from __future__ import annotations

import codecs
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

from gristmill.errors import DataError
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES, Rejected, Where
from gristmill.plugin.files import chunks, content_hash
from gristmill_jsonl.jsonl_source import unreadable

SPACE = re.compile(r"[ \t\r\n]*")
# How close to the end of the text read so far a value cut there fails to parse: a literal cut
# short fails at its first character ("-Infinit": 8 back), an escape at its backslash.
CUT_SHORT = 16


class JsonSource:
    def __init__(
        self, spec: str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, **options: Any
    ):
        self.spec = spec
        self.max_record_bytes = max_record_bytes

    def split(self, pieces: int) -> list[JsonSource]:
        return [self]  # a JSON document has no boundaries to cut at without parsing it

    def fingerprint(self) -> str:
        return content_hash(self.spec)

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        reader = _Text(self.spec)
        decoder = json.JSONDecoder()
        if not reader.skip_whitespace():
            return  # an empty file holds no records
        in_array = reader.peek() == "["
        if in_array:
            reader.advance(1)
        while True:
            if not reader.skip_whitespace():
                if in_array:
                    yield self._malformed(reader, "the array is not closed with ]")
                return
            if in_array and reader.peek() == "]":
                reader.advance(1)
                if reader.skip_whitespace():
                    yield self._malformed(reader, "unexpected data after the closing ]")
                return
            where = Where(self.spec, reader.line())
            decoded = self._decode(reader, decoder, where)
            if isinstance(decoded, Rejected):
                yield decoded
                return
            value, end = decoded
            size = end - reader.pos
            reader.advance(size)
            if size > self.max_record_bytes:  # parsed whole because it fit in one read
                yield self._too_large(where)
            else:
                yield value, where
            if in_array and (problem := self._past_separator(reader)) is not None:
                yield problem
                return

    def _decode(
        self, reader: _Text, decoder: json.JSONDecoder, where: Where
    ) -> tuple[Any, int] | Rejected:
        """The value at the cursor and where it ends, read on while it may be cut short by the
        end of the text read so far; or what ends the file's records there."""
        assert where.line is not None  # records() locates every value by its line
        while True:
            try:
                value, end = decoder.raw_decode(reader.buffer, reader.pos)
            except json.JSONDecodeError as exc:
                # A value cut where the text read so far ends fails near that end: in a
                # string, or in a literal, number or escape cut short (`tr`, `1e+`, `\u00`).
                incomplete = exc.pos >= len(reader.buffer) - CUT_SHORT or exc.msg.startswith(
                    "Unterminated string"
                )
                if incomplete and len(reader.buffer) - reader.pos > self.max_record_bytes:
                    return self._too_large(where)  # the rest was never read: no place to resume
                if not incomplete or not reader.read_more():
                    # Without a line structure there is no safe place to resume.
                    return Rejected(
                        "malformed-json",
                        f"malformed JSON at line "
                        f"{where.line + reader.buffer.count(chr(10), reader.pos, exc.pos)}: {exc.msg}",
                        where,
                        reader.buffer[reader.pos : reader.pos + 200],
                    )
            except (RecursionError, ValueError) as exc:  # too deep, or too many digits
                raw = reader.buffer[reader.pos : reader.pos + 200]
                # Where the value ends is unknown: no place to resume.
                return Rejected("malformed-json", unreadable(exc), where, raw)
            else:
                if end < len(reader.buffer):
                    return value, end
                # A number that ends where the text read so far ends may go on after it.
                if len(reader.buffer) - reader.pos > self.max_record_bytes:
                    return self._too_large(where)
                if not reader.read_more():
                    return value, end

    def _past_separator(self, reader: _Text) -> Rejected | None:
        """Move past the comma after an array item; what is wrong when neither , nor ] comes."""
        if not reader.skip_whitespace():
            return None  # reported as an unclosed array by records()
        if reader.peek() == ",":
            reader.advance(1)
        elif reader.peek() != "]":
            return self._malformed(reader, "expected , or ] between array items")
        return None

    def _too_large(self, where: Where) -> Rejected:
        return Rejected(
            "too-large",
            f"a value larger than {self.max_record_bytes:,} characters; raise "
            "--max-record-bytes if such records are expected",
            where,
        )

    def _malformed(self, reader: _Text, message: str) -> Rejected:
        where = Where(self.spec, reader.line())
        return Rejected("malformed-json", f"malformed JSON: {message}", where)


class _Text:
    """Decoded text of a file with a cursor; consumed text is dropped, its lines counted."""

    def __init__(self, path: str):
        self.path = path
        self._chunks = chunks(path)
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buffer = ""
        self.pos = 0
        self._counted = 0  # buffer position up to which newlines are counted …
        self._line = 1  # … and the line number there
        self._bad: DataError | None = None  # raised once the text before it is consumed

    def read_more(self) -> bool:
        # Drop what is consumed before growing, so the buffer holds about one value.
        self.line()
        self.buffer, self.pos, self._counted = self.buffer[self.pos :], 0, 0
        if self._bad is not None:
            raise self._bad
        # None after the last chunk flushes the decoder: a character cut short by the end of
        # the file is a bad byte too.
        for chunk in itertools.chain(self._chunks, [None]):
            try:
                text = self._decoder.decode(chunk or b"", final=chunk is None)
            except UnicodeDecodeError as exc:
                # The text before the bad byte is read first, so that the values there are
                # kept whatever the read size.
                text = exc.object[: exc.start].decode("utf-8")
                line = self._line + self.buffer.count("\n") + text.count("\n")
                self._bad = DataError(
                    f"not UTF-8 at line {line} ({exc.reason}); re-encode the file as UTF-8",
                    where=self.path,
                )
                if not text:
                    raise self._bad from None
            if text:
                self.buffer += text
                return True
        return False

    def skip_whitespace(self) -> bool:
        """Move past whitespace; False at the end of the file."""
        while True:
            self.pos = SPACE.match(self.buffer, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buffer):
                return True
            if not self.read_more():
                return False

    def peek(self) -> str:
        return self.buffer[self.pos]

    def advance(self, n: int) -> None:
        self.pos += n

    def line(self) -> int:
        """The line number at the cursor (counting only the text not counted before)."""
        self._line += self.buffer.count("\n", self._counted, self.pos)
        self._counted = self.pos
        return self._line
