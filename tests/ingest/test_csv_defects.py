"""Damaged CSV/TSV rows: nothing invented, the valid rows around a defect kept, the loss counted.

The rule these tests hold (docs/formats.md, "Damaged rows"): a record that spans several lines is
kept only when it reads as exactly one row with the header's number of fields; otherwise only its
first line is set aside and the next line is read as the start of a row. So a defect costs the
line it is on, never the rows after it, whatever the task size.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DataError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Rejected
from gristmill.plugin.manager import get_manager
from gristmill_csv.framing import runs
from tests.helpers import fuzz_examples

COLUMNS = ["id", "text", "label"]


def open_one(path: Path, **options):
    [source] = open_sources([str(path)], get_manager(), **options)
    return source


def kept_and_rejected(sources) -> tuple[list[tuple[dict, int]], list[Rejected]]:
    kept, rejected = [], []
    for source in sources:
        for item in source.records():
            if isinstance(item, Rejected):
                rejected.append(item)
            else:
                kept.append((item[0], item[1].line))
    return kept, rejected


def spreadsheet_rows(count: int, seed: int) -> list[list[str]]:
    """Rows whose text holds what spreadsheets quote: commas, quotes, line breaks."""
    rng = random.Random(seed)
    words = ["alpha", "beta, gamma", 'say "hi"', "two\nlines", "x", "a,b,c", "end\n"]
    return [
        [str(i), " ".join(rng.choices(words, k=rng.randint(1, 4))), rng.choice(["yes", "no"])]
        for i in range(count)
    ]


def as_csv(rows: list[list[str]]) -> str:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def with_unclosed_quote(rows: list[list[str]], at: int) -> tuple[bytes, int]:
    """The table with row ``at`` written as ``ID,"TEXT,LABEL``: a quote that is never closed.

    Returns the bytes and the line the damaged row is on.
    """
    before = as_csv([COLUMNS, *rows[:at]])
    damaged = f'{rows[at][0]},"{rows[at][1].replace(chr(10), " ")},{rows[at][2]}\n'
    after = as_csv(rows[at + 1 :])
    return (before + damaged + after).encode(), before.count("\n") + 1


@pytest.fixture(scope="module")
def twenty_thousand(tmp_path_factory) -> tuple[Path, list[dict], int]:
    rows = spreadsheet_rows(20_000, seed=2207)
    rows[2207][1] = "a plain text without quotes"
    data, line = with_unclosed_quote(rows, 2207)
    path = tmp_path_factory.mktemp("defects") / "big.csv"
    path.write_bytes(data)
    expected = [dict(zip(COLUMNS, row)) for i, row in enumerate(rows) if i != 2207]
    return path, expected, line


def test_an_unclosed_quote_in_20000_rows_costs_its_row_only(twenty_thousand):
    path, expected, line = twenty_thousand
    kept, rejected = kept_and_rejected([open_one(path)])
    assert [record for record, _ in kept] == expected  # nothing invented, nothing else lost
    assert [(r.reason, r.where.line) for r in rejected] == [("malformed-csv", line)]
    assert rejected[0].raw.startswith('2207,"a plain text without quotes')


@pytest.mark.parametrize("pieces", [2, 7, 40])
def test_an_unclosed_quote_reads_the_same_whatever_the_task_size(twenty_thousand, pieces):
    path, _, _ = twenty_thousand
    source = open_one(path)
    whole = list(source.records())
    parts = source.split(pieces)
    assert len(parts) == pieces
    assert [item for part in parts for item in part.records()] == whole


def documents(out: Path) -> list[list[int]]:
    ds = gristmill.open_dataset(out)
    return [ds.documents.document(i)[0].tolist() for i in range(len(ds))]


def test_prepare_counts_the_damaged_row_and_fail_names_its_line(twenty_thousand, tmp_path):
    path, expected, line = twenty_thousand
    for name, task_bytes in (("ds", 50_000), ("one-task", 1 << 30)):
        manifest = gristmill.prepare(
            path,
            tmp_path / name,
            on_error="skip",
            progress=False,
            task_bytes=task_bytes,
            fields={"text": "text"},
        )
        assert manifest["provenance"]["skipped"] == {"malformed-csv": 1}
        assert manifest["splits"]["train"]["num_documents"] == len(expected)
    assert documents(tmp_path / "ds") == documents(tmp_path / "one-task")
    [reject] = [json.loads(x) for x in (tmp_path / "ds.rejects.jsonl").read_text().splitlines()]
    assert reject["where"] == f"{path}:{line}" and reject["reason"] == "malformed-csv"
    assert reject["raw"] == '2207,"a plain text without quotes,yes'
    with pytest.raises(DataError, match=rf"big\.csv:{line}: malformed CSV"):
        gristmill.prepare(path, tmp_path / "fail", progress=False, fields={"text": "text"})


# --- any table, any defect, any task size ---------------------------------------------------------

EXAMPLES = fuzz_examples()
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Field text: what spreadsheets quote (delimiters, quotes, line breaks) and plain words.
CELL = st.text(st.sampled_from(list('ab ,\t"\né')), max_size=10)
# The same, except at its start: a stray quote that opens a field is closed by the next quote in
# the file that is not doubled, and only a quoted field that begins with the delimiter or a line
# break lets what lies between read as a row (docs/formats.md, "Damaged rows").
TAME_START = "ab é"
TAME_CELL = st.tuples(st.sampled_from(list(TAME_START)), CELL).map("".join) | st.just("")
DEFECTS = ["add-quote", "drop-quote", "extra-field", "missing-field", "nul", "not-utf8"]


def write_row(fields: list[str], delimiter: str) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerow(fields)
    return out.getvalue().encode()


def damage(row: bytes, defect: str, at: int, delimiter: str) -> bytes:
    """``row`` with one defect; ``at`` picks where (a byte offset, or which quote)."""
    body = row[:-1]  # without its newline
    quotes = [i for i, byte in enumerate(body) if byte == ord('"')]
    if defect == "drop-quote" and quotes:
        cut = quotes[at % len(quotes)]
        body = body[:cut] + body[cut + 1 :]
    elif defect == "extra-field":
        body += delimiter.encode() + b"x"
    elif defect == "missing-field" and delimiter.encode() in body:
        body = body[: body.rindex(delimiter.encode())]
    else:
        inserted = {"nul": b"\x00", "not-utf8": b"\xff"}.get(defect, b'"')
        cut = at % (len(body) + 1)
        body = body[:cut] + inserted + body[cut:]
    return body + b"\n"


@st.composite
def damaged_tables(draw: st.DrawFn, cell: st.SearchStrategy[str] = CELL, one_line: bool = False):
    """(delimiter, width, rows, their bytes with defects, the damaged rows' indices).

    ``one_line``: only rows written on one line are damaged.
    """
    delimiter = draw(st.sampled_from([",", "\t"]))
    width = draw(st.integers(1, 3))
    rows = draw(st.lists(st.lists(cell, min_size=width, max_size=width), min_size=1, max_size=25))
    written = [write_row(row, delimiter) for row in rows]
    candidates = [i for i, data in enumerate(written) if not one_line or data.count(b"\n") == 1]
    damaged = set(draw(st.lists(st.sampled_from(candidates), max_size=3))) if candidates else set()
    if one_line:  # and between two of them a quoted field where a stray quote stops
        damaged = set(
            functools.reduce(lambda kept, i: _apart(kept, i, written), sorted(damaged), [])
        )
    for i in sorted(damaged):
        defect = draw(st.sampled_from(DEFECTS))
        written[i] = damage(written[i], defect, draw(st.integers(0, 1000)), delimiter)
    return delimiter, width, rows, written, damaged


def _apart(kept: list[int], i: int, written: list[bytes]) -> list[int]:
    stops = [b'"' + c.encode() for c in TAME_START]  # an opening quote and what a field begins with
    between = b"".join(written[kept[-1] + 1 : i]) if kept else b""
    if kept and not any(stop in between for stop in stops):
        return kept
    return [*kept, i]


def read_table(root: Path, table, pieces: int) -> tuple[list, list[int]]:
    """The items of the damaged table (checked to be the same in ``pieces`` pieces), and the line
    each input row starts on."""
    delimiter, width, _, written, _ = table
    path = root / ("t.csv" if delimiter == "," else "t.tsv")
    path.write_bytes(write_row([f"c{i}" for i in range(width)], delimiter) + b"".join(written))
    source = open_one(path)
    whole = list(source.records())
    assert [item for part in source.split(pieces) for item in part.records()] == whole
    lines = list(itertools.accumulate((data.count(b"\n") for data in written[:-1]), initial=2))
    return whole, lines


def as_written(row: bytes, delimiter: str, width: int) -> dict | None:
    """A damaged row that still reads alone as one row whose quotes pair up (a NUL in a field,
    two bare quotes): it may be kept as written."""
    try:
        text = row.decode()
        parsed = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    if len(parsed) == 1 and len(parsed[0]) == width and row.count(b'"') % 2 == 0:
        return dict(zip([f"c{i}" for i in range(width)], parsed[0]))
    return None


@PROPERTY
@given(table=damaged_tables(TAME_CELL, one_line=True), pieces=st.integers(1, 9))
def test_a_damaged_row_costs_its_line_only_whatever_the_task_size(tmp_path, table, pieces):
    _, width, rows, written, damaged = table
    whole, lines = read_table(tmp_path, table, pieces)
    names = [f"c{i}" for i in range(width)]
    expected: list = []
    for i, row in enumerate(rows):
        if written[i] == b"\n":
            continue  # a field dropped from a row of one empty field: a blank line, skipped
        record = dict(zip(names, row)) if i not in damaged else as_written(written[i], *table[:2])
        expected.append((lines[i], "rejected" if record is None else record))
    assert [
        (i.where.line, "rejected") if isinstance(i, Rejected) else (i[1].line, i[0]) for i in whole
    ] == expected


@PROPERTY
@given(table=damaged_tables(), pieces=st.integers(1, 9))
def test_any_damage_reads_the_same_whatever_the_task_size(tmp_path, table, pieces):
    # Quoted fields that begin with the delimiter or a line break, defects in rows that span
    # lines: what is kept past a defect may then be lines of it read as rows (docs/formats.md),
    # but it is the same for any task size, every record is text of the file read as CSV from a
    # line start, and the rows before the first defect are all kept.
    delimiter, width, rows, written, damaged = table
    whole, lines = read_table(tmp_path, table, pieces)
    text = b"".join(written).split(b"\n")
    names = [f"c{i}" for i in range(width)]
    kept = {w.line: record for record, w in (i for i in whole if not isinstance(i, Rejected))}
    for line, record in kept.items():
        chunk = b"\n".join(text[line - 2 :]).decode("utf-8", "replace")
        reader = csv.reader(io.StringIO(chunk, newline=""), delimiter=delimiter)
        assert dict(zip(names, next(reader))) == record
    clean = min(damaged, default=len(rows))
    assert [kept.get(lines[i]) for i in range(clean)] == [dict(zip(names, r)) for r in rows[:clean]]


BYTES = st.lists(st.sampled_from([b"a", b",", b'"', b'""', b"\n", b"\r", b"\xff", b"a,b\n"]))


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(parts=BYTES, cuts=st.lists(st.integers(1, 7)), limit=st.integers(2, 30))
def test_lines_are_set_aside_the_same_wherever_chunks_end(parts, cuts, limit):
    """Setting a line aside reframes bytes already read, across chunk edges or from a reopened
    stream when they were dropped; small chunks put an edge everywhere."""
    data = b"".join(parts)
    pieces, pos = [], 0
    for size in itertools.cycle(cuts or [len(data) + 1]):
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size

    def one_row(data: bytes, line_ends: list[int], at_start: bool) -> int | None:
        # Record by record, unlike the reader's one parser for them all.
        lines = data.split(b"\n")
        for index, (begin, end) in enumerate(itertools.pairwise([0, *line_ends])):
            record = b"\n".join(lines[begin:end]).decode("utf-8", "replace")
            try:
                if len(list(csv.reader(io.StringIO(record, newline="")))) != 1:
                    return index
            except csv.Error:
                return index
        return None

    def framed(chunks):
        return [
            frame
            for run in runs(
                chunks,
                max_bytes=limit,
                check=one_row,
                reopen=lambda offset: [data[offset : offset + 3], data[offset + 3 :]],
            )
            for frame in run.frames()
        ]

    frames = framed([data])
    assert framed(pieces) == frames
    # Frames tile the lines: each starts on the line after the previous one ends, and a line set
    # aside is one line whose text is kept when it is within the limit.
    assert all(a.line + a.lines == b.line for a, b in itertools.pairwise(frames))
    lines = data.split(b"\n")
    for frame in frames:
        if frame.data is not None:
            assert data[frame.start : frame.start + len(frame.data)] == frame.data
        if frame.set_aside:
            assert frame.lines == 1
            text = lines[frame.line - 1] + (b"\n" if frame.line < len(lines) else b"")
            too_large = len(text.removesuffix(b"\n")) > limit
            assert frame.data in (None, text) and (frame.data is None) == too_large
