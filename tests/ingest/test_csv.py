"""CSV and TSV sources: the same records as JSON Lines, quoting, splitting, and bad input."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import itertools
import json
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import DataError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Rejected, SourceType
from gristmill.plugin.files import CHUNK
from gristmill.plugin.manager import get_manager
from gristmill_csv.framing import runs
from tests.helpers import read_all

HAS_ZSTD = importlib.util.find_spec("zstandard") is not None
COLUMNS = ["text", "note", "label"]


def open_one(path, **options):
    [source] = open_sources([str(path)], get_manager(), **options)
    return source


def delimited(rows: list[list[str]], delimiter: str = ",", lineterminator: str = "\r\n") -> bytes:
    """Rows as the stdlib writer quotes them: only fields that need it (RFC 4180).

    With ``\n`` line ends every field is quoted: the writer then leaves a bare ``\r`` unquoted,
    and a field ending in one cannot be told from a CRLF line end by any reader.
    """
    quoting = csv.QUOTE_MINIMAL if lineterminator == "\r\n" else csv.QUOTE_ALL
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter, lineterminator=lineterminator, quoting=quoting).writerows(
        rows
    )
    return out.getvalue().encode()


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# Any text a spreadsheet can hold. Surrogates (Cs) cannot be encoded as UTF-8 at all. NUL is left
# out because Python 3.10's csv module (still supported) refuses it ("line contains NUL");
# "\r" stays in: quoted, it must come back unchanged (see delimited()).
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
RECORDS = st.lists(st.fixed_dictionaries(dict.fromkeys(COLUMNS, TEXT)), max_size=30)


def jsonl_records(records: list[dict], root: Path) -> list:
    path = root / "same.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return read_all(open_one(path))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_csv_and_tsv_yield_the_same_records_as_jsonl(tmp_path_factory, records, newline, bom):
    root = tmp_path_factory.mktemp("same")
    expected = jsonl_records(records, root)
    assert expected == records
    rows = [COLUMNS] + [[r[c] for c in COLUMNS] for r in records]
    start = b"\xef\xbb\xbf" if bom else b""
    files = {
        "csv": write(root / "d.csv", start + delimited(rows, ",", newline)),
        "tsv": write(root / "d.tsv", start + delimited(rows, "\t", newline)),
        "tab.gz": write(root / "d.tab.gz", gzip.compress(start + delimited(rows, "\t", newline))),
        "csv.gz": write(root / "d.csv.gz", gzip.compress(start + delimited(rows, ",", newline))),
    }
    if HAS_ZSTD:
        import zstandard

        files["csv.zst"] = write(
            root / "d.csv.zst", zstandard.ZstdCompressor().compress(delimited(rows, ",", newline))
        )
    for name, path in files.items():
        assert read_all(open_one(path)) == expected, name
    # Header-less: the same rows after the header, with the names given.
    bare = write(root / "bare.csv", start + delimited(rows[1:], ",", newline))
    assert read_all(open_one(bare, column_names=COLUMNS)) == expected


def test_quoting_as_spreadsheets_write_it(tmp_path):
    path = write(
        tmp_path / "q.csv",
        'id,text\n1,"line one\nline two"\n2,"she said ""hi"", twice"\n3,"a,b\tc"\n4,""\n5,\n',
    )
    assert read_all(open_one(path)) == [
        {"id": "1", "text": "line one\nline two"},
        {"id": "2", "text": 'she said "hi", twice'},
        {"id": "3", "text": "a,b\tc"},
        {"id": "4", "text": ""},
        {"id": "5", "text": ""},
    ]
    # Every line of a record is counted: the record after a two-line one starts at line 4.
    assert [w.line for _, w in open_one(path).records()] == [2, 4, 5, 6, 7]


def test_values_stay_strings(tmp_path):
    path = write(tmp_path / "n.csv", "zip,score,flag\n00501,1e3,TRUE\n")
    assert read_all(open_one(path)) == [{"zip": "00501", "score": "1e3", "flag": "TRUE"}]


def test_tsv_reads_tabs_and_claims_its_suffixes(tmp_path):
    data = "prompt\tcompletion\nsay hi\thi, there\n"
    for name in ("a.tsv", "b.tab", "c.TSV.gz"):
        path = tmp_path / name
        raw = data.encode()
        write(path, gzip.compress(raw) if name.endswith(".gz") else raw)
        assert read_all(open_one(path)) == [{"prompt": "say hi", "completion": "hi, there"}]
    names = {name: c.suffixes for name, c in get_manager().components(SourceType).items()}
    assert names["csv"] == (".csv",) and names["tsv"] == (".tsv", ".tab")


def test_a_bom_and_blank_lines_before_the_header_are_accepted(tmp_path):
    path = write(tmp_path / "bom.csv", b'\xef\xbb\xbf\r\n"title",body\r\nT,B\r\n\r\nU,C\r\n')
    source = open_one(path)
    assert source.schema() == {"title": "string", "body": "string"}
    assert [(r, w.line) for r, w in source.records()] == [
        ({"title": "T", "body": "B"}, 3),
        ({"title": "U", "body": "C"}, 5),
    ]
    bare = write(tmp_path / "bare.csv", b"\xef\xbb\xbfx,y\n")
    assert read_all(open_one(bare, column_names=["a", "b"])) == [{"a": "x", "b": "y"}]


def test_empty_and_header_only_files_yield_no_records(tmp_path):
    for name, data in {"empty.csv": b"", "blank.csv": b"\n\r\n", "empty.csv.gz": b""}.items():
        source = open_one(write(tmp_path / name, data))
        assert read_all(source) == [] and source.split(4) == [source], name
        # No header, no schema: an empty file cannot disagree with the other files of a run.
        assert not hasattr(source, "schema"), name
    header_only = open_one(write(tmp_path / "h.csv", "a,b\n"))
    assert read_all(header_only) == [] and header_only.schema() == {"a": "string", "b": "string"}
    assert read_all(open_one(tmp_path / "empty.csv", column_names=["a"])) == []


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a,b,a", r"dup.csv:1: the header row names 'a' twice \(columns 1 and 3\)"),
        (",text", r"dup.csv:1: the header row leaves column 1 without a name"),
        ('a,"b\n', r"dup.csv:1: cannot read the header row: malformed CSV: unexpected end"),
    ],
)
def test_a_broken_header_fails_naming_the_file(tmp_path, header, message):
    path = write(tmp_path / "dup.csv", header + "\n1,2,3\n")
    with pytest.raises(DataError, match=message):
        open_one(path)
    # It fails before anything is written, whatever the error policy: it is not one bad record.
    with pytest.raises(DataError, match=message):
        gristmill.prepare(path, tmp_path / "out", on_error="skip", progress=False)
    assert not (tmp_path / "out").exists()


def test_column_names_are_checked_too(tmp_path):
    path = write(tmp_path / "bare.csv", "1,2\n")
    with pytest.raises(DataError, match=r"column_names names 'x' twice"):
        open_one(path, column_names=["x", "x"])
    with pytest.raises(DataError, match=r"column_names must be a list of names"):
        open_one(path, column_names="x,y")
    [item] = list(open_one(path, column_names=["x", "y", "z"]).records())
    assert item.reason == "ragged-row" and item.where.line == 1
    assert item.message.startswith("the row has 2 fields but column_names has 3 (x, y, z)")


def test_each_bad_record_is_rejected_where_it_starts(tmp_path):
    path = write(
        tmp_path / "bad.csv",
        b"name,text\n"  # 1
        b"ok,fine\n"  # 2
        b"short\n"  # 3
        b"a,b,c\n"  # 4
        b'q,"two\nlines",extra\n'  # 5-6: ragged, counted from where it starts
        b"caf\xe9,latin-1\n"  # 7
        b'x,"closed"then text\n'  # 8
        b'y,"' + b"z" * 300 + b'"\n'  # 9
        b"after,all\n"  # 10
        b'last,"never closed\n'  # 11
        b"more,text\n",  # 12: read as a row again, since the quote on line 11 never closes
    )
    items = list(open_one(path, max_record_bytes=200).records())
    good = [(r, w.line) for r, w in (i for i in items if not isinstance(i, Rejected))]
    assert good == [
        ({"name": "ok", "text": "fine"}, 2),
        ({"name": "after", "text": "all"}, 10),
        ({"name": "more", "text": "text"}, 12),
    ]
    bad = {i.where.line: i for i in items if isinstance(i, Rejected)}
    assert {line: r.reason for line, r in bad.items()} == {
        3: "ragged-row",
        4: "ragged-row",
        5: "ragged-row",
        7: "not-utf8",
        8: "malformed-csv",
        9: "too-large",
        11: "malformed-csv",
    }
    assert bad[3].message.startswith("the row has 1 field but the header has 2 (name, text)")
    assert bad[4].message.startswith("the row has 3 fields but the header has 2 (name, text)")
    assert "commas inside a field? quote it" in bad[4].message
    assert bad[3].raw == "short" and bad[5].raw == 'q,"two\nlines",extra'
    assert bad[7].message.startswith("not UTF-8 (byte 4 of line 7); re-encode the file as UTF-8")
    assert bad[7].raw == "caf\ufffd,latin-1"
    assert "text follows the closing quote" in bad[8].message
    assert bad[9].message.startswith("the record is larger than 200 bytes; raise")
    assert bad[11].message.startswith("malformed CSV: a quote on this line is not closed on it")
    assert bad[11].raw == 'last,"never closed'
    assert all(r.where.origin == str(path) for r in bad.values())


def test_under_fail_the_first_bad_record_stops_prepare_with_file_and_line(tmp_path):
    path = write(tmp_path / "r.csv", 'text\nfine\n"x",y\n')
    with pytest.raises(DataError, match=r"r.csv:3: the row has 2 fields but the header has 1"):
        gristmill.prepare(path, tmp_path / "out", progress=False)


@pytest.mark.parametrize("name", ["u.csv", "u.csv.gz"])
@pytest.mark.parametrize("limit", [100, None])
def test_an_unclosed_quote_costs_its_line_and_the_rows_after_it_are_read(tmp_path, name, limit):
    # Over the limit or not, the record the quote opens is not one row: its first line is set
    # aside, and the lines after it (read again, for a compressed file) are rows again.
    data = ('a,b\n1,"open\n' + "2,3\n" * 50).encode()
    path = write(tmp_path / name, gzip.compress(data) if name.endswith(".gz") else data)
    options = {} if limit is None else {"max_record_bytes": limit}
    [item, *rows] = list(open_one(path, **options).records())
    assert (item.reason, item.where.line, item.raw) == ("malformed-csv", 2, '1,"open')
    assert "only this line is lost and the next line is read as a new row" in item.message
    assert [(r, w.line) for r, w in rows] == [({"a": "2", "b": "3"}, n) for n in range(3, 53)]


def test_a_bare_quote_costs_its_line_and_nothing_else(tmp_path):
    # Not RFC 4180, but common by hand: 5'11" leaves a quote open. A row whose quotes do not pair
    # up cannot be told from a line of a damaged quoted field, so it is rejected, alone.
    path = write(tmp_path / "h.csv", 'who,height\nann,5\'11"\nbob,6\'"\ncy,5\nwe,"6\'"""\n')
    whole = [
        (i.reason, i.where.line) if isinstance(i, Rejected) else (i[0], i[1].line)
        for i in open_one(path).records()
    ]
    assert whole == [
        ("malformed-csv", 2),
        ("malformed-csv", 3),
        ({"who": "cy", "height": "5"}, 4),
        ({"who": "we", "height": "6'\""}, 5),  # quoted, as RFC 4180 writes it
    ]


def test_a_file_without_newlines_is_rejected_in_bounded_memory(tmp_path):
    path = write(tmp_path / "one-line.csv", b"a,b\n" + b"x" * (8 * CHUNK))
    tracemalloc.start()
    try:
        items = list(open_one(path, max_record_bytes=1000).records())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(i.reason, i.where.line) for i in items] == [("too-large", 2)]
    assert peak < 4 * CHUNK  # a few chunks, never the 8-chunk record
    # The same for a header that never ends: reading stops at the limit, with a clear error.
    endless = write(tmp_path / "endless.csv", b"x" * (4 * CHUNK))
    with pytest.raises(DataError, match=r"endless.csv:1: the header row is longer than 1,000"):
        open_one(endless, max_record_bytes=1000)


def test_fields_longer_than_the_csv_module_default_are_read(tmp_path):
    default = 128 * 1024  # the limit a fresh interpreter starts with, per field
    long = "w" * (default + 10)
    path = write(tmp_path / "long.csv", f'text\n"{long}"\n')
    previous = csv.field_size_limit(default)  # as if no source had raised it yet
    try:
        assert read_all(open_one(path)) == [{"text": long}]
    finally:
        csv.field_size_limit(max(previous, csv.field_size_limit()))


# --- splitting -----------------------------------------------------------------------------------

CELL = st.text(st.sampled_from(list('ab ,"\n\r\té')), max_size=12)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(CELL, min_size=2, max_size=2), max_size=40),
    pieces=st.integers(1, 12),
    header=st.booleans(),
)
def test_split_pieces_are_disjoint_in_order_and_keep_line_numbers(
    tmp_path_factory, rows, pieces, header
):
    root = tmp_path_factory.mktemp("split")
    names = ["left", "right"]
    path = write(root / "s.csv", delimited([names, *rows] if header else rows))
    source = open_one(path, column_names=None if header else names)
    whole = list(source.records())
    assert [r for r, _ in whole] == [dict(zip(names, row)) for row in rows]
    parts = source.split(pieces)
    assert 1 <= len(parts) <= pieces
    # Byte ranges tile the body: disjoint and in order.
    assert all(a.piece.end == b.piece.start for a, b in itertools.pairwise(parts))
    assert sum(1 for p in parts if p.piece.end is None) <= 1
    # Records and their line numbers are exactly the unsplit source's.
    assert [item for part in parts for item in part.records()] == whole
    if len(parts) > 1:
        assert all(part.split(3) == [part] for part in parts)  # a piece is not cut again


BYTES = st.lists(st.sampled_from([b"a", b"bb", b",", b'"', b"\n", b"\r", b"\xff", "é".encode()]))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=BYTES, pieces=st.integers(2, 12), limit=st.integers(4, 40))
def test_split_gives_the_same_rejections_too_whatever_the_input(
    tmp_path_factory, parts, pieces, limit
):
    # Any bytes: bad quoting, stray \r, invalid UTF-8, records over the limit. Pieces parse
    # different spans of the file at once than the whole does, so this also proves that the
    # result never depends on how much is parsed together.
    path = write(tmp_path_factory.mktemp("junk") / "j.csv", b"".join(parts))
    source = open_one(path, column_names=["x", "y"], max_record_bytes=limit)
    whole = list(source.records())
    assert [item for part in source.split(pieces) for item in part.records()] == whole
    lines = [item.where.line if isinstance(item, Rejected) else item[1].line for item in whole]
    assert lines == sorted(set(lines))  # each item starts on a later line than the one before


@given(parts=BYTES, cuts=st.lists(st.integers(1, 7)), limit=st.integers(2, 30))
def test_framing_does_not_depend_on_where_chunks_end(parts, cuts, limit):
    """Records cross the reader's chunk edges anywhere; small chunks put an edge everywhere."""
    data = b"".join(parts)
    pieces, pos = [], 0
    for size in cuts * (len(data) // max(1, sum(cuts)) + 1):
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    pieces.append(data[pos:])

    def framed(chunks):
        return [f for run in runs(chunks, max_bytes=limit) for f in run.frames()]

    frames = framed([data])
    assert framed(pieces) == frames
    # Frames tile the bytes, and each starts on the line after the previous one ends.
    ends = [f.start + len(f.data) for f in frames if f.data is not None]
    assert all(end in {f.start for f in frames} or end == len(data) for end in ends)
    assert all(a.line + a.lines == b.line for a, b in itertools.pairwise(frames))
    assert [f.data for f in frames if f.data is not None] == [
        data[f.start : f.start + len(f.data)] for f in frames if f.data is not None
    ]
    assert all(f.data is None or len(f.data) <= limit + 1 for f in frames)  # + its newline


def test_split_at_chunk_scale_matches_the_stdlib_reader(tmp_path):
    """Records straddle the 1 MiB read chunks; boundaries must survive every chunk edge."""
    rng = random.Random(5)
    alphabet = 'abc ,"\n\r\t'
    rows = [["".join(rng.choices(alphabet, k=rng.randint(0, 80))), str(i)] for i in range(80_000)]
    data = delimited([["text", "id"], *rows])
    assert len(data) > 3 * CHUNK
    path = write(tmp_path / "big.csv", data)
    expected = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
    source = open_one(path)
    whole = list(source.records())
    assert [r for r, _ in whole] == expected
    parts = source.split(7)
    assert len(parts) == 7
    assert [item for part in parts for item in part.records()] == whole
    packed = open_one(write(tmp_path / "big.csv.gz", gzip.compress(data)))
    assert packed.split(7) == [packed]  # a compressed stream cannot seek
    assert [r for r, _ in packed.records()] == expected


# --- the pipeline --------------------------------------------------------------------------------


def test_prepare_reads_prompt_completion_columns_and_skips_bad_rows(tmp_path):
    rows = [["prompt", "completion"]]
    rows += [[f"What is {i} + {i}?", f"It is {2 * i}.\nSure."] for i in range(20)]
    data = delimited(rows)
    data += b"only one field\r\n"  # ragged
    data += b"caf\xe9,\xe9\r\n"  # not UTF-8
    data += b'"q",""\r\n'  # empty answer: the field mapper's problem
    data += b'"unclosed,x\r\n'  # malformed, to the end of the file
    path = write(tmp_path / "qa.csv", data)
    with pytest.raises(DataError, match=r"qa.csv:42: the row has 1 field but the header has 2"):
        gristmill.prepare(path, tmp_path / "fail", progress=False)
    manifest = gristmill.prepare(path, tmp_path / "ds", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {
        "empty-field:completion": 1,
        "malformed-csv": 1,
        "not-utf8": 1,
        "ragged-row": 1,
    }
    ds = gristmill.open_dataset(tmp_path / "ds")
    assert len(ds) == 20
    ids, mask = ds.documents.document(3)
    assert ds.tokenizer.decode(ids) == "What is 3 + 3?\nIt is 6.\nSure.<|endoftext|>"
    assert ds.tokenizer.decode(ids[mask.astype(bool)]) == "It is 6.\nSure.<|endoftext|>"
    rejects = [
        json.loads(line) for line in (tmp_path / "ds.rejects.jsonl").read_text().splitlines()
    ]
    assert sorted(r["where"] for r in rejects) == [f"{path}:{n}" for n in (42, 43, 44, 45)]


def test_prepare_with_column_names_on_the_command_line(tmp_path, capsys):
    path = write(tmp_path / "bare.tsv", "say hi\thello\nsay bye\tgoodbye\n")
    out = tmp_path / "ds"
    code = main(["prepare", str(path), "-o", str(out), "--column-names", "prompt,completion"])
    assert code == 0, capsys.readouterr().err
    ds = gristmill.open_dataset(out)
    texts = [ds.tokenizer.decode(ds.documents.document(i)[0]) for i in range(len(ds))]
    assert texts == ["say hi\nhello<|endoftext|>", "say bye\ngoodbye<|endoftext|>"]


def test_files_with_different_columns_are_reported_and_empty_files_are_not(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder / "a.csv", "text\none\n")
    write(folder / "b.csv", "")  # empty: nothing to disagree with
    write(folder / "c.csv", "text\ntwo\n")
    write(folder / "d.csv", "body\nthree\n")
    manifest = gristmill.prepare(folder, tmp_path / "ds", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {"schema-drift": 1}
    assert manifest["splits"]["train"]["num_documents"] == 2


def test_the_fingerprint_follows_the_bytes(tmp_path):
    path = write(tmp_path / "f.csv", "text\none\n")
    before = open_one(path).fingerprint()
    assert all(part.fingerprint() == before for part in open_one(path).split(2))
    write(path, "text\none!\n")
    assert open_one(path).fingerprint() != before


def test_the_zstandard_inputs_run_where_zstandard_is_installed():
    """The .zst inputs join the tests above only where zstandard is installed: say so here,
    rather than leave them out unseen."""
    if not HAS_ZSTD:
        pytest.skip("zstandard is not installed: the .zst inputs are left out of this module")
    import zstandard

    assert (
        zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(b"x")) == b"x"
    )
