"""The ``text`` source: plain text files read per file, paragraph or line; blank units counted,
not errors; the cleaning rules and line deduplication; compression, folders and globs; pieces of
one large file that give the same dataset for any number of workers; bad bytes named by file and
line; and the command line."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DataError, OptionError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import PassedOver, Rejected
from gristmill.plugin.files import CHUNK, lines
from gristmill.plugin.manager import get_manager
from gristmill.store.convert import convert
from gristmill.testing import conformance
from gristmill_text.ranges import paragraph_ranges
from tests.helpers import examples, run_gristmill, tree_bytes

HAS_ZSTD = importlib.util.find_spec("zstandard") is not None

test_conformance = conformance("text")

NOTES = (
    "\ufeffFirst line\r\n"  # a BOM and a Windows line end
    "second line  \n"
    "\n"
    "   \n"
    "\n"
    "Next paragraph\n"
    "\tindented\x07 with a bell\n"
    "second line  \n"
    "\n"
    "last\n"
)


def open_one(path: Path, **options) -> object:
    [source] = open_sources([str(path)], get_manager(), options)
    return source


def read(source) -> tuple[list, Counter]:
    """The records (text, line) and rejections of ``source``, and what it passed over."""
    got, passed = [], Counter()
    for item in source.records():
        if isinstance(item, PassedOver):
            passed[item.reason] += item.rows
        elif isinstance(item, Rejected):
            got.append(item)
        else:
            got.append((item[0]["text"], item[1].line))
    return got, passed


@pytest.fixture
def notes(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_bytes(NOTES.encode())
    return path


# --- units -----------------------------------------------------------------------------------


def test_a_record_per_line_with_its_line_number(notes):
    got, passed = read(open_one(notes, unit="line"))
    assert got == [
        ("First line", 1),
        ("second line  ", 2),
        ("Next paragraph", 6),
        ("\tindented\x07 with a bell", 7),
        ("second line  ", 8),
        ("last", 10),
    ]
    assert passed == {"blank-line": 4}


def test_a_record_per_paragraph_from_its_first_line(notes):
    got, passed = read(open_one(notes, unit="paragraph"))
    assert got == [
        ("First line\nsecond line  ", 1),
        ("Next paragraph\n\tindented\x07 with a bell\nsecond line  ", 6),
        ("last", 10),
    ]
    assert passed == {}  # blank lines part paragraphs: they are not units


def test_a_record_per_file_holds_the_text_as_written(notes):
    got, passed = read(open_one(notes, unit="file"))
    assert got == [(NOTES.removeprefix("\ufeff"), 1)]
    assert passed == {}


def test_txt_reads_lines_and_md_whole_files_unless_told(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "a.md").write_text("# Title\n\nBody.\n")
    assert read(open_one(tmp_path / "a.txt"))[0] == [("one", 1), ("two", 2)]
    assert read(open_one(tmp_path / "a.md"))[0] == [("# Title\n\nBody.\n", 1)]
    assert read(open_one(tmp_path / "a.md", unit="paragraph"))[0] == [("# Title", 1), ("Body.", 3)]
    assert read(open_one(tmp_path / "a.txt", unit="file"))[0] == [("one\ntwo\n", 1)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unit": "document"}, "unit must be one of file, paragraph, line, got 'document'"),
        ({"clean": "tabs"}, "clean has no rule 'tabs'; its rules are control, trailing-space"),
        ({"clean": 1}, "clean must be true, false or a list of rule names, got 1"),
        ({"dedup_lines": "yes"}, "dedup_lines must be true or false, got 'yes'"),
        ({"units": "line"}, "source 'text' has no option 'units'; did you mean unit?"),
    ],
)
def test_a_bad_option_is_refused_naming_it(notes, options, message):
    with pytest.raises(OptionError, match=message.replace("?", r"\?")):
        open_one(notes, **options)


# --- blank units ---------------------------------------------------------------------------


def test_blank_units_are_counted_in_the_manifest_not_rejected(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n\n  \ntwo\n")
    (folder / "empty.md").write_text(" \n\n")
    out = tmp_path / "out"
    manifest = gristmill.prepare(folder, out, on_error="fail", progress=False)
    provenance = manifest["provenance"]
    assert provenance["passed_over"] == {"blank-file": 1, "blank-line": 2}
    assert provenance["skipped"] == {}
    assert manifest["splits"]["train"]["num_documents"] == 2
    assert not (tmp_path / "out.rejects.jsonl").exists()


def test_a_source_that_leaves_nothing_out_adds_no_key(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    manifest = gristmill.prepare(tmp_path / "a.txt", tmp_path / "out", progress=False)
    assert "passed_over" not in manifest["provenance"]


def test_convert_and_stream_count_blank_units_too(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\n\n")
    result = convert(tmp_path / "a.txt", tmp_path / "out.jsonl")
    assert result == {"records": 2, "skipped": {}, "passed_over": {"blank-line": 3}}
    stream = gristmill.stream(tmp_path / "a.txt", seq_len=8)
    assert len(list(stream)) > 0
    assert stream.stats.passed_over == {"blank-line": 3}


# --- cleaning and deduplication ------------------------------------------------------------


def test_cleaning_rules_one_by_one(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n\nkeep\ttab \x00\x1b[0m  \r\n\n\n\n \nend\x7f\x85 \n\n", newline="")
    text = lambda **options: read(open_one(path, unit="file", **options))[0][0][0]  # noqa: E731
    assert text(clean=["control"]) == "\n\nkeep\ttab [0m  \n\n\n\n \nend \n\n"
    assert text(clean=["trailing-space"]) == "\n\nkeep\ttab \x00\x1b[0m\n\n\n\n\nend\x7f\n\n"
    assert text(clean=["blank-lines"]) == "keep\ttab \x00\x1b[0m  \n\nend\x7f\x85 "
    assert text(clean=True) == "keep\ttab [0m\n\nend"
    assert text() == path.read_bytes().decode()  # off by default: the text as written


def test_cleaning_applies_to_lines_and_paragraphs_and_can_leave_a_line_blank(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a \x01\n\x02\x03\nb\n")
    assert read(open_one(path, clean=True)) == ([("a", 1), ("b", 3)], {"blank-line": 1})
    # A line left empty by cleaning parts paragraphs like any blank line.
    assert read(open_one(path, unit="paragraph", clean=True))[0] == [("a", 1), ("b", 3)]
    assert read(open_one(path, unit="paragraph"))[0] == [("a \x01\n\x02\x03\nb", 1)]


def test_dedup_lines_drops_repeats_within_a_file_and_counts_them(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("header\nalpha\nheader\n\nheader  \nbeta\n")
    second.write_text("header\n")
    got, passed = read(open_one(first, dedup_lines=True))
    assert got == [("header", 1), ("alpha", 2), ("header  ", 5), ("beta", 6)]
    assert passed == {"blank-line": 1, "duplicate-line": 1}
    # Cleaning first: "header  " is then a repeat too.
    assert read(open_one(first, dedup_lines=True, clean=True))[1]["duplicate-line"] == 2
    # Another file has its own lines seen.
    assert read(open_one(second, dedup_lines=True))[0] == [("header", 1)]
    got, passed = read(open_one(first, unit="paragraph", dedup_lines=True))
    assert got == [("header\nalpha", 1), ("header  \nbeta", 5)]
    assert passed == {"duplicate-line": 1}
    got, passed = read(open_one(first, unit="file", dedup_lines=True))
    assert got == [("header\nalpha\n\nheader  \nbeta\n", 1)]


def test_a_paragraph_of_repeats_leaves_no_record(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x\ny\n\ny\nx\n\nz\n")
    got, passed = read(open_one(path, unit="paragraph", dedup_lines=True))
    assert got == [("x\ny", 1), ("z", 7)]
    assert passed == {"duplicate-line": 2}


def test_dedup_lines_keeps_a_file_in_one_piece(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("".join(f"line {i % 50}\n" for i in range(2000)))
    assert len(open_one(path).split(4)) == 4
    assert len(open_one(path, dedup_lines=True).split(4)) == 1


# --- compression, folders, globs -------------------------------------------------------------


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("unit", ["line", "paragraph", "file"])
def test_compressed_files_give_the_records_of_the_plain_one(notes, unit):
    plain = read(open_one(notes, unit=unit))
    gz = notes.with_name("notes.txt.gz")
    gz.write_bytes(gzip.compress(notes.read_bytes()))
    assert read(open_one(gz, unit=unit)) == plain
    if not HAS_ZSTD:
        pytest.skip("zstandard is not installed: the .txt.zst file is left out")
    zst = notes.with_name("notes.txt.zst")
    zst.write_bytes(_zstd(notes.read_bytes()))
    assert read(open_one(zst, unit=unit)) == plain


def test_a_truncated_archive_fails_after_counting_what_it_read(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(b"one\n\ntwo\n" * 1000)[:-20])
    items = []
    with pytest.raises(DataError, match="ends early"):
        items.extend(open_one(path).records())
    assert isinstance(items[-1], PassedOver) and items[-1].reason == "blank-line"


def test_folders_and_globs_find_text_files_beside_other_formats(tmp_path):
    folder = tmp_path / "notes"
    (folder / "deeper").mkdir(parents=True)
    (folder / "a.txt").write_text("from txt\n")
    (folder / "deeper" / "b.md").write_text("# from md\n")
    (folder / "c.txt.gz").write_bytes(gzip.compress(b"from gz\n"))
    (folder / "d.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (folder / "e.csv.bak").write_text("not read\n")
    found = open_sources([str(folder)], get_manager())
    texts = [record["text"] for source in found for record, _ in source.records()]
    assert texts == ["from txt", "from gz", "from jsonl", "# from md\n"]
    globbed = open_sources([str(folder / "**" / "*.md")], get_manager())
    assert [s.spec for s in globbed] == [str(folder / "deeper" / "b.md")]


def test_a_folder_passes_over_its_dataset_card_but_not_a_markdown_corpus(tmp_path, caplog):
    data, docs = tmp_path / "data", tmp_path / "docs"
    data.mkdir(), docs.mkdir()
    (data / "README.md").write_text("# the card\n")
    (data / "train.jsonl").write_text(json.dumps({"text": "a record"}) + "\n")
    (docs / "README.md").write_text("# intro\n")
    (docs / "guide.md").write_text("# guide\n")

    def texts(spec: Path) -> list[str]:
        found = open_sources([str(spec)], get_manager())
        return [record["text"] for source in found for record, _ in source.records()]

    with caplog.at_level("INFO", logger="gristmill"):
        assert texts(data) == ["a record"]
    assert "README.md: a dataset card" in caplog.text
    assert texts(docs) == ["# intro\n", "# guide\n"]
    assert texts(data / "README.md") == ["# the card\n"]


# --- pieces and workers ----------------------------------------------------------------------


def _text(rng: random.Random, paragraphs: int) -> str:
    words = ["mill", "grist", "stone", "wheel", "flour", "sack", "river", "été", "水"]
    out = []
    for _ in range(paragraphs):
        lines = [
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            for _ in range(rng.randint(1, 6))
        ]
        out.append("\n".join(lines) + "\n" + rng.choice(["\n", "\n\n", " \n", "\t\n\n"]))
    return "".join(out)


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_any_number_of_workers_writes_the_same_dataset(tmp_path, unit):
    path = tmp_path / "big.txt"
    path.write_text(_text(random.Random(7), 3000))
    options = dict(
        source_options={"unit": unit, "clean": True},
        task_bytes=20_000,  # the one file is cut into many pieces
        tokens_per_shard=20_000,
        val_fraction=0.1,
        progress=False,
    )
    trees = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifest = gristmill.prepare(path, out, workers=workers, **options)
        trees[workers] = tree_bytes(out)
    assert trees[1] == trees[2]
    assert len(list((tmp_path / "w1" / "train").iterdir())) > 2  # several tasks wrote shards
    whole = read(open_one(path, unit=unit, clean=True))
    assert manifest["splits"]["train"]["num_documents"] + manifest["splits"]["val"][
        "num_documents"
    ] == len(whole[0])
    assert manifest["provenance"].get("passed_over", {}) == dict(whole[1])


LINE = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=12)


@settings(max_examples=examples(0.5))
@given(
    lines=st.lists(st.one_of(LINE, st.sampled_from(["", " ", "\t", "\r", " \r"])), max_size=40),
    pieces=st.integers(1, 8),
    unit=st.sampled_from(["line", "paragraph"]),
    clean=st.booleans(),
)
def test_pieces_together_give_the_whole_and_its_counts(
    tmp_path_factory, lines, pieces, unit, clean
):
    path = tmp_path_factory.mktemp("pieces") / "a.txt"
    path.write_bytes("\n".join(lines).encode())
    source = open_one(path, unit=unit, clean=clean)
    whole = read(source)
    parts = [read(part) for part in source.split(pieces)]
    assert [item for got, _ in parts for item in got] == whole[0]
    assert sum((passed for _, passed in parts), Counter()) == whole[1]


def test_paragraph_cuts_fall_on_blank_lines_across_chunk_ends(tmp_path):
    """Blank lines placed on every side of the 1 MiB reads: each cut starts a blank line whose
    number is right, and the pieces read the whole."""
    rng = random.Random(3)
    parts = []
    size = 0
    # The blank line starts 2 bytes before a read's end (it straddles two reads), right at the
    # start of the next (the newline before it ends a read), or 1 byte after it.
    for edge in (CHUNK - 2, 2 * CHUNK, 3 * CHUNK + 1):
        while size < edge - 300:
            line = "x" * rng.randint(20, 200) + "\n"
            parts.append(line)
            size += len(line)
        filler = "y" * (edge - size - 1) + "\n"
        parts += [filler, " \t \n", "z\n"]
        size += len(filler) + 6
    path = tmp_path / "a.txt"
    data = "".join(parts).encode()
    path.write_bytes(data)
    ranges = paragraph_ranges(str(path), 16)
    assert [start for start, _, _ in ranges] == [0, CHUNK - 2, 2 * CHUNK, 3 * CHUNK + 1]
    for start, _, first in ranges[1:]:
        assert data[start - 1 : start] == b"\n"
        assert not data[start : data.index(b"\n", start)].strip()
        assert data.count(b"\n", 0, start) + 1 == first
    assert [r[1] for r in ranges[:-1]] == [r[0] for r in ranges[1:]]
    source = open_one(path, unit="paragraph")
    assert [item for part in source.split(16) for item in read(part)[0]] == read(source)[0]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        ("line", r"bad\.txt:4: not UTF-8 \(byte 4 of the line\); re-encode the file as UTF-8$"),
        ("paragraph", r"bad\.txt:4: not UTF-8 \(byte 4 of the line\).*paragraph from line 3\)$"),
        ("file", r"bad\.txt:4: not UTF-8 \(byte 4 of the line\); re-encode the file as UTF-8$"),
    ],
)
def test_bytes_that_are_not_utf8_stop_prepare_naming_file_and_line(tmp_path, unit, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good\n\nnext\ncaf\xe9 au lait\n\nafter\n")
    with pytest.raises(DataError, match=message):
        gristmill.prepare(
            path, tmp_path / "out", source_options={"unit": unit}, progress=False, workers=1
        )


def test_under_skip_the_unit_with_bad_bytes_is_counted_and_set_aside(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good\n\nnext\ncaf\xe9 au lait\n\nafter\n")
    out = tmp_path / "out"
    options = dict(on_error="skip", progress=False)
    manifest = gristmill.prepare(path, out, source_options={"unit": "paragraph"}, **options)
    assert manifest["provenance"]["skipped"] == {"not-utf8": 1}
    assert manifest["splits"]["train"]["num_documents"] == 2  # "good" and "after"
    [rejected] = [json.loads(line) for line in (tmp_path / "out.rejects.jsonl").open()]
    assert rejected["where"] == f"{path}:4" and rejected["raw"] == "caf\ufffd au lait"


def test_a_unit_larger_than_max_record_bytes_is_rejected_with_the_finer_unit_named(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(
        "short\n\n" + "forty bytes of text in one line, twice.\n" * 3 + "\n" + "x" * 120
    )

    def read_as(unit: str) -> list:
        opened = open_sources([str(path)], get_manager(), {"unit": unit}, max_record_bytes=100)
        return read(opened[0])[0]

    [rejected] = read_as("file")
    assert rejected.reason == "too-large" and rejected.where.line == 1
    assert "the file is longer than 100 bytes; read it by paragraph or line" in rejected.message
    short, paragraph, line = read_as("paragraph")
    assert short == ("short", 1) and paragraph.where.line == 3 and line.where.line == 7
    assert "the paragraph is longer than 100 bytes; read it by line" in paragraph.message
    assert line.message.startswith("the line is longer than 100 bytes; raise --max-record-bytes")
    assert line.message.endswith("(in the paragraph from line 7)")


def test_a_line_longer_than_the_limit_across_reads_is_rejected_and_reading_goes_on(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"before\n" + b"x" * (3 * CHUNK + 5) + b"\nafter\n\n" + b"y" * (CHUNK + 7))

    def read_as(unit: str) -> list:
        opened = open_sources([str(path)], get_manager(), {"unit": unit}, max_record_bytes=CHUNK)
        return read(opened[0])[0]

    before, long, after, last = read_as("line")
    assert (before, after) == (("before", 1), ("after", 3))
    assert (long.reason, long.where.line, last.reason, last.where.line) == (
        "too-large",
        2,
        "too-large",
        5,
    )
    first, second = read_as("paragraph")
    assert (first.where.line, second.where.line) == (2, 5)
    assert first.message.endswith("(in the paragraph from line 1)")


@pytest.mark.parametrize("bad", [b"", b"caf\xe9\n"])
def test_a_paragraph_over_the_limit_across_reads_is_one_rejection(tmp_path, bad):
    """It leaves no tail behind as a record; a line that cannot be read names the rejection
    wherever the reads end, so every split gives the same."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"start\n" + (b"z" * 1000 + b"\n") * 3000 + bad + b"tail\n\nnext\n")
    [source] = open_sources(
        [str(path)], get_manager(), {"unit": "paragraph"}, max_record_bytes=CHUNK
    )
    whole = read(source)
    rejected, after = whole[0]
    assert after == ("next", 3004 + bool(bad))
    if bad:
        assert (rejected.reason, rejected.where.line) == ("not-utf8", 3002)
        assert rejected.message.endswith("(in the paragraph from line 1)")
    else:
        assert (rejected.reason, rejected.where.line) == ("too-large", 1)
    for pieces in (2, 3):
        assert [item for part in source.split(pieces) for item in read(part)[0]] == whole[0]


def _by_line(path: Path, limit: int) -> list:
    """What reading ``path`` line by line gives, the plain way: the reference for the blocks."""
    out = []
    for raw, index in lines(str(path), max_bytes=limit):
        number = index + 1
        if raw is None:
            out.append(("too-large", number))
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            out.append(("not-utf8", number))
            continue
        text = text[:-1] if text.endswith("\r") else text
        if text.strip():
            out.append((text, number))
    return out


@pytest.mark.parametrize("limit", [64 << 20, 300_000])
def test_reading_in_blocks_gives_the_lines_read_one_by_one(tmp_path, limit):
    rng = random.Random(limit)
    parts, size = [b"\xef\xbb\xbf"], 0
    while size < 3 * CHUNK + 1000:
        kind = rng.random()
        if kind < 0.04:
            line = b"y" * rng.randint(200_000, 1_500_000)  # across reads, some over the limit
        elif kind < 0.3:
            line = b" \t"[: rng.randint(0, 2)]
        elif kind < 0.33:
            line = "café".encode("latin-1")
        else:
            line = ("é" * rng.randint(1, 80)).encode()
        parts.append(line + rng.choice([b"\n", b"\r\n", b"\n"]))
        size += len(parts[-1])
    path = tmp_path / "a.txt"
    path.write_bytes(b"".join(parts) + b"last, with no newline\r")
    [source] = open_sources([str(path)], get_manager(), {"unit": "line"}, max_record_bytes=limit)
    got = [(i.reason, i.where.line) if isinstance(i, Rejected) else i for i in read(source)[0]]
    assert got == _by_line(path, limit)


def _paragraphs_by_line(path: Path) -> list:
    """Paragraphs gathered from :func:`_by_line`'s reading, blank lines included."""
    out, kept, first, bad = [], [], 0, None
    for raw, index in [*lines(str(path), max_bytes=1 << 30), (b"", -1)]:
        number = index + 1
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            text, bad = "x", bad or ("not-utf8", number)
        if text.strip():
            kept.append(text)
            first = first or number
        elif first:
            out.append(bad or ("\n".join(kept), first))
            kept, first, bad = [], 0, None
    return out


def test_paragraphs_read_in_blocks_are_the_lines_gathered_one_by_one(tmp_path):
    rng = random.Random(2)
    parts, size = [], 0
    while size < 3 * CHUNK:
        kind = rng.random()
        if kind < 0.25:
            line = rng.choice([b"", b" ", b"\t \r", "\u3000".encode()])
        elif kind < 0.26:
            line = "café".encode("latin-1")
        elif kind < 0.27:
            line = b"w" * rng.randint(100_000, 700_000)  # paragraphs across reads
        else:
            line = ("é" * rng.randint(1, 80)).encode() + rng.choice([b"", b"\r"])
        parts.append(line + b"\n")
        size += len(parts[-1])
    path = tmp_path / "a.txt"
    path.write_bytes(b"".join(parts))
    got = [
        (i.reason, i.where.line) if isinstance(i, Rejected) else i
        for i in read(open_one(path, unit="paragraph"))[0]
    ]
    assert got == _paragraphs_by_line(path)


# --- command line ----------------------------------------------------------------------------


def test_the_command_line_prepares_a_folder_of_notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("one\n\ntwo\n")
    (folder / "b.md").write_text("# Title\n\nBody.\n")
    result = run_gristmill("prepare", str(folder), "-o", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "1 unit(s) left out on purpose (blank-line: 1)" in result.stderr
    assert "wrote train: 3 documents" in result.stderr
    config = tmp_path / "run.toml"
    config.write_text('[prepare]\nsource_options = {unit = "paragraph", clean = true}\n')
    result = run_gristmill(
        "prepare", str(folder), "-o", str(tmp_path / "paragraphs"), "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert "wrote train: 4 documents" in result.stderr
    flags = ("--source-option", "unit=paragraph", "--source-option", "clean=true")
    result = run_gristmill("prepare", str(folder), "-o", str(tmp_path / "flags"), *flags)
    assert result.returncode == 0, result.stderr
    assert "wrote train: 4 documents" in result.stderr
    result = run_gristmill(
        "prepare", str(folder), "-o", str(tmp_path / "bad"), "--source-option", "unit"
    )
    assert result.returncode == 2 and "expected NAME=VALUE, got 'unit'" in result.stderr
