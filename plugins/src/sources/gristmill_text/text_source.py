"""``text``: plain text files, one record ``{"text": ...}`` per file, paragraph or line.

The unit is the source option ``unit``. Blank units are not records and not errors: each piece
counts them, with the lines dropped as repeats, and yields the counts as
:class:`~gristmill.plugin.components.PassedOver` at its end (the manifest's
``provenance.passed_over``). Bytes that are not UTF-8 are rejected as jsonl rejects them
(reason ``not-utf8``), naming the file, the line and the byte.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from gristmill.errors import DataError, OptionError
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES, PassedOver, Rejected, Where
from gristmill.plugin.files import (
    chunks,
    content_hash,
    is_compressed,
    line_ranges,
    without_compression,
)
from gristmill_text.cleaning import SeenLines, check_clean, cleaner, line_ends, rewrite
from gristmill_text.paragraphs import Paragraphs
from gristmill_text.ranges import paragraph_ranges

UNITS = ("file", "paragraph", "line")
BOM = b"\xef\xbb\xbf"  # editors on Windows start files with it: not part of the text
# A Markdown file's structure (headings, lists, code blocks) spans its lines; a .txt file is
# read line by line, as the Hugging Face `text` loader and gristmill's hub: source read it.
DEFAULT_UNIT = {".md": "file"}
Item = tuple[dict[str, Any], Where] | Rejected | PassedOver


class TextSource:
    """A text file (plain, ``.gz`` or ``.zst``), or a byte range of a plain one."""

    def __init__(
        self,
        spec: str,
        *,
        unit: str | None = None,
        clean: Any = False,
        dedup_lines: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        byte_range: tuple[int, int | None, int] = (0, None, 1),
        **context: Any,  # what gristmill passes that a text source does not use
    ):
        self.spec = spec
        self.unit = _unit(spec) if unit is None else unit
        if self.unit not in UNITS:
            raise OptionError(
                f"source 'text': unit must be one of {', '.join(UNITS)}, got {unit!r} "
                "(file is what the Hugging Face text loader calls document)"
            )
        self.rules = check_clean(clean)
        self._clean = cleaner(self.rules)
        if not isinstance(dedup_lines, bool):
            raise OptionError(
                f"source 'text': dedup_lines must be true or false, got {dedup_lines!r}"
            )
        self.dedup_lines = dedup_lines
        self.max_record_bytes = max_record_bytes
        self.byte_range = byte_range  # (start, end, number of the first line)

    def __repr__(self) -> str:
        start, end, _ = self.byte_range
        return f"TextSource({self.spec!r}, unit={self.unit!r}, bytes {start}:{end})"

    def split(self, pieces: int) -> list[TextSource]:
        """Byte ranges cut at line starts (``line``) or blank lines (``paragraph``).

        A whole file is one record, a compressed stream cannot seek, and line deduplication
        must see every earlier line of the file: those stay one piece.
        """
        whole = self.byte_range != (0, None, 1) or is_compressed(self.spec)
        if self.unit == "file" or self.dedup_lines or whole:
            return [self]
        ranges = line_ranges if self.unit == "line" else paragraph_ranges
        return [
            TextSource(
                self.spec,
                unit=self.unit,
                clean=self.rules,
                max_record_bytes=self.max_record_bytes,
                byte_range=piece,
            )
            for piece in ranges(self.spec, pieces)
        ]

    def fingerprint(self) -> str:
        return content_hash(self.spec)

    def records(self) -> Iterator[Item]:
        counts: Counter[str] = Counter()
        units = self._lines if self.unit == "line" else self._paragraphs
        try:
            yield from (self._file if self.unit == "file" else units)(counts)
        except DataError:  # a truncated archive: what was counted before it still counts
            yield from self._passed(counts)
            raise
        if counts:
            yield from self._passed(counts)

    def _passed(self, counts: Counter[str]) -> Iterator[PassedOver]:
        for reason, n in sorted(counts.items()):
            yield PassedOver(reason, Where(self.spec), n)

    # --- units -----------------------------------------------------------------------------------

    def _lines(self, counts: Counter[str]) -> Iterator[Item]:
        spec, seen = self.spec, SeenLines() if self.dedup_lines else None
        for number, block in self._line_blocks():
            for line in block.split("\n") if isinstance(block, str) else block:
                if not isinstance(line, str):
                    yield line
                elif not line or line.isspace():
                    counts["blank-line"] += 1
                elif seen is not None and seen.repeats(line):
                    counts["duplicate-line"] += 1
                else:
                    yield {"text": line}, Where(spec, number)
                number += 1

    def _paragraphs(self, counts: Counter[str]) -> Iterator[Item]:
        """Runs of lines that are not blank, joined with ``\\n`` (see :mod:`.paragraphs`)."""
        seen = SeenLines() if self.dedup_lines else None
        paragraphs = Paragraphs(self.spec, self.max_record_bytes, self._too_large)
        return paragraphs.read(self._line_blocks(), seen, counts)

    def _file(self, counts: Counter[str]) -> Iterator[Item]:
        data, size = [], 0
        for chunk in chunks(self.spec):
            size += len(chunk)
            if size > self.max_record_bytes:
                yield self._too_large("file", 1)
                return
            data.append(chunk)
        raw = b"".join(data)
        skip = len(BOM) if raw.startswith(BOM) else 0
        try:
            text = raw[skip:].decode()
        except UnicodeDecodeError as exc:
            yield _not_utf8(self.spec, raw, skip + exc.start, 1)
            return
        if self.rules or self.dedup_lines:
            seen = SeenLines() if self.dedup_lines else None
            collapse = "blank-lines" in self.rules
            text = rewrite(text, cleaner(self.rules), seen, collapse, counts)
        if not text or text.isspace():
            counts["blank-file"] += 1
        else:
            yield {"text": text}, Where(self.spec, 1)

    # --- lines -----------------------------------------------------------------------------------

    def _line_blocks(self) -> Iterator[tuple[int, str | list[str | Rejected]]]:
        """The piece's lines a block at a time: the number of the block's first line, and its
        text (lines joined with ``\\n``) or, where it was read line by line, each line or why
        it cannot be read; line endings, and a byte-order mark at the start of the file, taken
        off, the line rules applied.

        Each read of the file is decoded and split whole, so that a line costs no Python call of
        its own; a line longer than ``max_record_bytes`` is passed over as it streams, never held.
        """
        start, end, number = self.byte_range
        limit = self.max_record_bytes
        pending: list[bytes] = []  # the start of a line that the reads so far have not ended
        size, overlong = 0, False
        for chunk in chunks(self.spec, start, end):
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                head = chunk[:cut]
                block: bytes | None = head
                if overlong:
                    yield number, [self._too_large("line", number)]
                    number, overlong = number + 1, False
                    after = head.find(b"\n")
                    block = None if after < 0 else head[after + 1 :]
                elif pending:
                    block = b"".join([*pending, head])
                if block is not None:
                    lines = self._decoded(block, number)
                    yield number, lines
                    number += lines.count("\n") + 1 if isinstance(lines, str) else len(lines)
                pending, size = [], 0
                chunk = chunk[cut + 1 :]
            size += len(chunk)
            if size > limit:
                overlong, pending = True, []
            elif chunk and not overlong:
                pending.append(chunk)
        if overlong:
            yield number, [self._too_large("line", number)]
        elif pending:
            yield number, self._decoded(b"".join(pending), number)

    def _decoded(self, block: bytes, number: int) -> str | list[str | Rejected]:
        """The text of ``block`` (whole lines, the last without its newline), the first of
        which is line ``number``: decoded at once, or line by line where a line is not UTF-8 or
        may be too long."""
        skip = len(BOM) if number == 1 and block.startswith(BOM) else 0
        if len(block) <= self.max_record_bytes:
            try:
                text = (block[skip:] if skip else block).decode()
            except UnicodeDecodeError:
                pass
            else:
                return self._tidy(text)
        return [
            self._one_line(raw, number + index, skip if index == 0 else 0)
            for index, raw in enumerate(block.split(b"\n"))
        ]

    def _one_line(self, raw: bytes, number: int, skip: int) -> str | Rejected:
        if len(raw) > self.max_record_bytes:
            return self._too_large("line", number)
        try:
            return self._tidy(raw[skip:].decode())
        except UnicodeDecodeError as exc:
            return _not_utf8(self.spec, raw, skip + exc.start, number)

    def _tidy(self, text: str) -> str:
        text = line_ends(text)
        return text if self._clean is None else self._clean(text)

    def _too_large(self, unit: str, number: int) -> Rejected:
        finer = {"file": "paragraph or line", "paragraph": "line", "line": None}[unit]
        hint = f"read it by {finer} (source option unit), or raise" if finer else "raise"
        return Rejected(
            "too-large",
            f"the {unit} is longer than {self.max_record_bytes:,} bytes; {hint} "
            "--max-record-bytes if such records are expected",
            Where(self.spec, number),
        )


def _unit(spec: str) -> str:
    name = without_compression(spec).lower()
    return next((unit for suffix, unit in DEFAULT_UNIT.items() if name.endswith(suffix)), "line")


def _not_utf8(spec: str, raw: bytes, at: int, first: int) -> Rejected:
    """Where ``raw`` (lines from number ``first`` on) stops being UTF-8, at its byte ``at``:
    the line and the byte in it; that line is the raw text kept for the reject file."""
    line_start = raw.rfind(b"\n", 0, at) + 1
    line_end = raw.find(b"\n", at)
    line = raw[line_start : len(raw) if line_end < 0 else line_end]
    return Rejected(
        "not-utf8",
        f"not UTF-8 (byte {at - line_start + 1} of the line); re-encode the file as UTF-8",
        Where(spec, first + raw.count(b"\n", 0, at)),
        line.decode("utf-8", errors="replace"),
    )
