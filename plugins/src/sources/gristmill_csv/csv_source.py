"""``csv`` and ``tsv``: delimited text with a header row (or named columns), RFC 4180 quoting.

Records are dicts column → string, exactly as written: no type guessing, so a ZIP code or an
answer ``"007"`` reaches the tokenizer unchanged. Records are framed by quote parity (see
:mod:`gristmill_csv.framing`) and parsed by the stdlib csv module in strict mode, so a malformed
record is reported where it starts instead of being guessed at. A record that spans lines is kept
only when it is exactly one row of the right width; otherwise its first line is set aside and the
next line starts a row, so one bad quote costs one line, not the rows after it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from gristmill.errors import DataError
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES, Rejected, Where
from gristmill.plugin.files import chunks, content_hash, is_compressed
from gristmill_csv.framing import Frame, Run, frame_starts, runs

BOM = b"\xef\xbb\xbf"  # Excel's "CSV UTF-8" and Windows editors start files with it
DELIMITER_NAMES = {",": "commas", "\t": "tabs"}


class Piece(NamedTuple):
    """The byte range of a source whose records it yields: it starts at a record boundary."""

    start: int
    end: int | None  # None: to the end of the file (a source that has not been split)
    first_line: int  # the 1-based line number at ``start``


def open_csv(
    spec: str,
    *,
    column_names: Sequence[str] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    **options: Any,
) -> CsvSource | EmptyTable:
    """Open a comma-separated file; ``column_names`` means it has no header row."""
    return open_table(spec, ",", column_names, max_record_bytes)


def open_tsv(
    spec: str,
    *,
    column_names: Sequence[str] | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    **options: Any,
) -> CsvSource | EmptyTable:
    """Open a tab-separated file; ``column_names`` means it has no header row."""
    return open_table(spec, "\t", column_names, max_record_bytes)


def open_table(
    spec: str, delimiter: str, column_names: Sequence[str] | None, max_record_bytes: int
) -> CsvSource | EmptyTable:
    """Read the header now, so that a broken one fails before any output is written.

    A file with no header row at all (empty, or blank lines only) holds no records and no schema:
    it opens as an :class:`EmptyTable`, which offers no ``schema()`` to compare with other files.
    """
    _allow_fields_up_to(max_record_bytes)
    if column_names is not None:
        if isinstance(column_names, str) or not all(isinstance(n, str) for n in column_names):
            raise DataError(
                f"column_names must be a list of names, got {column_names!r}", where=spec
            )
        names = checked_names(list(column_names), "column_names", where=spec)
        return CsvSource(spec, delimiter, names, Piece(0, None, 1), max_record_bytes, header=False)
    header = read_header(spec, delimiter, max_record_bytes)
    if header is None:
        return EmptyTable(spec)
    names, body = header
    return CsvSource(spec, delimiter, names, body, max_record_bytes)


class CsvSource:
    """A delimited file, or a byte range of one, whose column names are known."""

    def __init__(
        self,
        spec: str,
        delimiter: str,
        names: tuple[str, ...],
        piece: Piece,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        *,
        header: bool = True,
    ):
        self.spec = spec
        self.header = header  # whether the names came from the file (else from column_names)
        self.named_by = "the header" if header else "column_names"
        self.delimiter = delimiter
        self.names = names
        self.piece = piece
        self.max_record_bytes = max_record_bytes

    def __repr__(self) -> str:
        return f"CsvSource({self.spec!r}, bytes {self.piece.start}:{self.piece.end})"

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        _allow_fields_up_to(self.max_record_bytes)
        for run in self._framed():
            yield from self._run_records(run)

    def split(self, pieces: int) -> list[CsvSource]:
        """Byte ranges cut at record boundaries; each piece keeps the column names and its lines."""
        start, end, first_line = self.piece
        if pieces <= 1 or end is not None or is_compressed(self.spec):
            return [self]
        size = os.path.getsize(self.spec)
        targets = [start + (size - start) * k // pieces for k in range(1, pieces)]
        bounds = [(start, first_line)]
        _allow_fields_up_to(self.max_record_bytes)  # records that span lines are parsed here too
        for offset, line in frame_starts(self._framed(), targets):
            if bounds[-1][0] < offset < size:
                bounds.append((offset, line))
        if len(bounds) == 1:
            return [self]
        stops = [offset for offset, _ in bounds[1:]] + [size]
        return [
            CsvSource(
                self.spec,
                self.delimiter,
                self.names,
                Piece(a, b, line),
                self.max_record_bytes,
                header=self.header,
            )
            for (a, line), b in zip(bounds, stops)
        ]

    def fingerprint(self) -> str:
        return content_hash(self.spec)

    def schema(self) -> dict[str, str]:
        """Every column is text: values are never converted, so the names are the schema."""
        return dict.fromkeys(self.names, "string")

    # --- bytes to records -----------------------------------------------------------------------

    def _framed(self) -> Iterator[Run]:
        """The piece's records as framed, lines set aside where a quote ran on (see framing)."""
        start, _, first_line = self.piece
        return runs(
            self._bytes_from(start),
            max_bytes=self.max_record_bytes,
            start=start,
            first_line=first_line,
            check=self._first_not_one_row,
            reopen=self._bytes_from,
        )

    def _bytes_from(self, offset: int) -> Iterator[bytes]:
        if is_compressed(self.spec):
            # A compressed stream cannot seek: read from the top and pass over what came before.
            return _after(chunks(self.spec), offset)
        return chunks(self.spec, offset, self.piece.end)

    def _first_not_one_row(self, data: bytes, line_ends: list[int], at_start: bool) -> int | None:
        """Of records that span lines (joined in ``data``; ``line_ends``: where each ends), the
        index of the first that does not parse as one row, or None.

        One parser reads them all: it ends a row where each record ends exactly when each is one
        row. Only where rows end counts here: a row with the wrong number of fields, or bytes
        that are not UTF-8, are rejected whole by the reader, and reading goes on after them.
        """
        text = (data.removeprefix(BOM) if at_start else data).decode("utf-8", "surrogateescape")
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self.delimiter, strict=True)
        rows_end: list[int] = []
        with contextlib.suppress(csv.Error):  # where it stops, the record is not one row
            for _ in reader:
                rows_end.append(reader.line_num)
        if rows_end == line_ends:
            return None
        return next(
            (i for i, (row, record) in enumerate(zip(rows_end, line_ends)) if row != record),
            min(len(rows_end), len(line_ends) - 1),
        )

    def _run_records(self, run: Run) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        """A whole run through one csv reader; frame by frame when anything is amiss.

        The one reader gives exactly the frame-by-frame rows when every frame parses to one row
        (the csv state at each frame start is then a fresh record's), which the line numbers where
        its rows end prove. Anything else (a bad byte, a csv error, a frame of several rows) is
        rare and goes frame by frame, so the result never depends on how the file was chunked.
        """
        if run.set_aside:
            yield self._set_aside(run)
            return
        rows = self._one_row_per_frame(run)
        if rows is None:
            for frame in run.frames():
                yield from self._frame_records(frame)
            return
        names, width, spec = self.names, len(self.names), self.spec
        for row, line, (begin, end) in zip(
            rows, [0, *run.line_ends], itertools.pairwise([0, *run.byte_ends])
        ):
            if len(row) == width:
                yield dict(zip(names, row)), Where(spec, run.line + line)
            elif row:  # [] is a blank line
                raw = _text(run.data[begin:end])  # type: ignore[index]
                yield Rejected(
                    "ragged-row", self._ragged(len(row)), Where(spec, run.line + line), raw
                )

    def _one_row_per_frame(self, run: Run) -> list[list[str]] | None:
        if run.data is None:
            return None
        data = run.data[len(BOM) :] if run.start == 0 and run.data.startswith(BOM) else run.data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self.delimiter, strict=True)
        rows, ends = [], []
        try:
            for row in reader:
                rows.append(row)
                ends.append(reader.line_num)
        except csv.Error:
            return None
        return rows if ends == run.line_ends else None

    def _set_aside(self, run: Run) -> Rejected:
        """A line whose quote ran on into lines that are not one row: it alone is lost.

        The message cannot tell how far the quote ran: a piece of the file that ends after the
        line sees less of it than the whole file does, and both must report the same.
        """
        return Rejected(
            "malformed-csv",
            "malformed CSV: a quote on this line is not closed on it, and the lines after it do "
            "not complete one row (or that record is over --max-record-bytes); under "
            "--on-error skip only this line is lost and the next line is read as a new row. "
            "Quote every field that holds a quote or a line break, and double the quotes "
            'inside it ("")',
            Where(self.spec, run.line),
            None if run.data is None else _text(run.data),
        )

    def _frame_records(self, frame: Frame) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        where = Where(self.spec, frame.line)
        if frame.data is None:
            yield Rejected(
                "too-large",
                f"the record is larger than {self.max_record_bytes:,} bytes; raise "
                "--max-record-bytes if such records are expected",
                where,
            )
            return
        text = decode(frame)
        if not isinstance(text, str):
            line, byte = text
            yield Rejected(
                "not-utf8",
                f"not UTF-8 (byte {byte} of line {line}); re-encode the file as UTF-8 (e.g. "
                "iconv -f cp1252 -t utf-8, or save it as 'CSV UTF-8' from a spreadsheet)",
                where,
                _text(frame.data),
            )
            return
        for offset, row, raw in parse_rows(text, self.delimiter):
            where = Where(self.spec, frame.line + offset)
            if row is None:
                yield Rejected("malformed-csv", raw, where, _text(frame.data))
            elif len(row) == len(self.names):
                yield dict(zip(self.names, row)), where
            else:
                yield Rejected("ragged-row", self._ragged(len(row)), where, raw)

    def _ragged(self, fields: int) -> str:
        expected = len(self.names)
        hint = (
            f"{DELIMITER_NAMES.get(self.delimiter, repr(self.delimiter))} inside a field? quote it"
            if fields > expected
            else "a missing field, or a line break in a field that is not quoted?"
        )
        return (
            f"the row has {fields} field{'s' * (fields != 1)} but {self.named_by} has "
            f"{expected} ({', '.join(self.names)}); {hint}"
        )


class EmptyTable:
    """A file with no header row: no records, and no schema to hold other files to."""

    def __init__(self, spec: str):
        self.spec = spec

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        return iter(())

    def split(self, pieces: int) -> list[EmptyTable]:
        return [self]

    def fingerprint(self) -> str:
        return content_hash(self.spec)


# --- shared by the header and the records ---------------------------------------------------------


def read_header(
    spec: str, delimiter: str, max_record_bytes: int
) -> tuple[tuple[str, ...], Piece] | None:
    """The column names and where the records after them begin; None when there is no header."""
    stream = runs(chunks(spec), max_bytes=max_record_bytes, stop_when_too_large=True)
    try:
        for frame in (frame for run in stream for frame in run.frames()):
            where = f"{spec}:{frame.line}"
            if frame.data is None:
                raise DataError(
                    f"the header row is longer than {max_record_bytes:,} bytes (not a CSV file, "
                    "or a quote that is never closed?)",
                    where=where,
                )
            text = decode(frame)
            if not isinstance(text, str):
                raise DataError(
                    f"the header row is not UTF-8 (byte {text[1]}); re-encode the file as UTF-8",
                    where=where,
                )
            rows = list(parse_rows(text, delimiter))
            if not rows:
                continue  # blank lines before the header, as csv.DictReader allows
            _, row, raw = rows[0]
            if row is None or len(rows) > 1:
                problem = raw if row is None else "it spans several rows"
                raise DataError(f"cannot read the header row: {problem}", where=where)
            names = checked_names(row, "the header row", where=where)
            return names, Piece(frame.start + len(frame.data), None, frame.line + frame.lines)
    finally:
        stream.close()
    return None


def checked_names(names: list[str], what: str, *, where: str) -> tuple[str, ...]:
    """Column names fit for dict keys: each one present and different from the others."""
    fix = (
        "fix the header, or pass column_names (--column-names) to name the columns and read "
        "the first row as data"
        if what == "the header row"
        else "give every column a distinct name"
    )
    if not names:  # only column_names can be: blank lines before a header row are skipped
        raise DataError(f"{what} names no column: name at least one", where=where)
    seen: dict[str, int] = {}
    for column, name in enumerate(names, 1):
        if not name.strip():
            raise DataError(f"{what} leaves column {column} without a name; {fix}", where=where)
        if name in seen:
            raise DataError(
                f"{what} names {name!r} twice (columns {seen[name]} and {column}); {fix}",
                where=where,
            )
        seen[name] = column
    return tuple(names)


def decode(frame: Frame) -> str | tuple[int, int]:
    """The frame's text, or (line, byte within that line) of the first byte that is not UTF-8."""
    data = frame.data
    assert data is not None
    skipped = 0
    if frame.start == 0 and data.startswith(BOM):
        data, skipped = data[len(BOM) :], len(BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        byte = exc.start - line_start + 1 + (skipped if line_start == 0 else 0)
        return frame.line + data.count(b"\n", 0, exc.start), byte


def parse_rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str] | None, str]]:
    """The rows of one frame: (line offset in the frame, fields, the row's text).

    At most one row for a record of the body: a record that spans lines reaches the reader only
    when it is one row (see :mod:`gristmill_csv.framing`). The header is framed without that
    check, so a bare quote can make it run on into several rows, which the header reader refuses.
    On a csv error the row is None and the text is the message.
    """
    lines = text.split("\n")
    # Lines that keep their "\n": the csv module keeps a line break inside a quoted field only if
    # the line it reads ends with one.
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter, strict=True)
    done = 0
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            yield done, None, f"malformed CSV: {exc}; {_hint(str(exc))}"
            return
        if row is None:
            return
        if row:  # [] is a blank line
            yield done, row, "\n".join(lines[done : reader.line_num]).removesuffix("\r")
        done = reader.line_num


def _text(data: bytes) -> str:
    """A record's bytes as text for the reject file, without its line end."""
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r\n")


def _after(stream: Iterable[bytes], skip: int) -> Iterator[bytes]:
    """The chunks of ``stream`` without its first ``skip`` bytes."""
    for chunk in stream:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        yield chunk[skip:] if skip else chunk
        skip = 0


def _hint(message: str) -> str:
    """What usually causes each csv error, in the words of someone fixing a spreadsheet export."""
    if "expected after" in message:
        return (
            "text follows the closing quote of a field: quote the whole field and double every "
            'quote inside it ("")'
        )
    if "unexpected end of data" in message:
        return 'a quoted field is never closed: close it, and double every quote inside it ("")'
    if "new-line character" in message:
        return (
            "a carriage return (\\r) that does not end a line, outside quotes: convert old Mac "
            "line endings to \\n, or quote the field"
        )
    if "field larger than field limit" in message:
        return "raise --max-record-bytes if such fields are expected"
    return 'fields that hold quotes, delimiters or line breaks must be quoted, quotes doubled ("")'


def _allow_fields_up_to(max_record_bytes: int) -> None:
    """Let the csv module read any field that fits in a record.

    Its default limit (128 KiB per field) would reject long documents that ``max_record_bytes``
    allows. The limit is process-wide; it is only ever raised here, never lowered.
    """
    limit = min(max_record_bytes, 2**31 - 1)  # a C long on every platform
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)
