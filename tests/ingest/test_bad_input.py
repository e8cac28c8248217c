"""Bad input stops prepare with the file, line and field, and exit status 2 on the CLI."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
import gristmill.plugin.files
from gristmill import hookimpl
from gristmill.cli import main
from gristmill.errors import DataError, DatasetError, UnknownComponentError
from gristmill.ingest.plan import plan_chunks
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import TokenizerType
from gristmill.plugin.files import line_ranges
from gristmill.plugin.manager import get_manager
from gristmill_byte import ByteTokenizer


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', '{"text": "a"'], r"data.jsonl:2: malformed JSON at column"),
        ([b'{"text": "caf\xe9"}'], r"data.jsonl:1: not UTF-8 \(byte 14 of the line\)"),
        (['{"text": "ok"}', '{"txt": "no"}'], r"data.jsonl:2: field 'text': missing"),
        (['{"text": "ok"}', '{"text": 42}'], r"data.jsonl:2: field 'text': expected text, got int"),
        (['{"text": null}'], r"data.jsonl:1: field 'text': expected text, got null"),
        (['{"text": "   "}'], r"data.jsonl:1: field 'text': empty"),
        (
            ['{"text": "ok"}', "[1, 2]"],
            r"data.jsonl:2: expected an object with named fields, got list",
        ),
        (['{"text": "\\ud800"}'], r"data.jsonl:1: cannot tokenize"),
        (
            ['{"prompt": "p", "completion": "c"}', '{"prompt": "p", "reply": "c"}'],
            r"data.jsonl:2: field 'completion': missing; looked for response, output, answer, "
            r"completion; name the column with --fields completion=COLUMN",
        ),
        (['{"question": "q", "answer": ""}'], r"data.jsonl:1: field 'answer': empty"),
        (
            ['{"title": "t"}'],
            r"data.jsonl:1: cannot tell the format of records with keys \['title'\]",
        ),
    ],
)
def test_bad_records_are_located(tmp_path, write_jsonl, lines, message):
    src = write_jsonl(lines)
    with pytest.raises(DataError, match=message):
        gristmill.prepare(src, tmp_path / "out", progress=False)


def test_empty_inputs(tmp_path, write_jsonl):
    with pytest.raises(DataError, match="hold no usable records"):
        gristmill.prepare(write_jsonl([]), tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="not found"):
        gristmill.prepare(tmp_path / "nope.jsonl", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="matches no files"):
        gristmill.prepare(str(tmp_path / "*.nothing"), tmp_path / "out", progress=False)
    (tmp_path / "notes.rtf").write_text("hi")
    with pytest.raises(UnknownComponentError, match=r"no source reads .*notes.rtf.*\.jsonl"):
        gristmill.prepare(tmp_path / "notes.rtf", tmp_path / "out", progress=False)


def test_cli_reports_errors_without_a_traceback(tmp_path, write_jsonl, capsys):
    src = write_jsonl(['{"text": 1}'])
    assert main(["prepare", str(src), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"(^|\n)gristmill: error: ", err) and "Traceback" not in err
    assert "data.jsonl:1: field 'text': expected text, got int" in err
    assert main(["prepare", str(src), "-o", str(tmp_path / "o2"), "--fields", "text"]) == 2
    assert "--fields expects NAME=COLUMN" in capsys.readouterr().err
    assert main(["prepare", str(src), "-o", str(tmp_path / "o3"), "--tokenizer", "gpt9"]) == 2
    assert "no tokenizer named 'gpt9'; available: byte" in capsys.readouterr().err


def test_fields_and_format_options(tmp_path, write_jsonl):
    src = write_jsonl([{"q": "What is 2+2?", "a": "4", "sys": "Be brief."}])
    out = tmp_path / "out"
    gristmill.prepare(
        src, out, fields={"prompt": "q", "completion": "a", "system": "sys"}, progress=False
    )
    ds = gristmill.open_dataset(out)
    ids, mask = ds.documents.document(0)
    assert ds.tokenizer.decode(ids) == "Be brief.\n\nWhat is 2+2?\n4<|endoftext|>"
    assert ds.tokenizer.decode(ids[mask.astype(bool)]) == "4<|endoftext|>"
    # Aliases: instruction + input → prompt, output → completion.
    src = write_jsonl([{"instruction": "Add", "input": "2 and 2", "output": "4"}], "alias.jsonl")
    gristmill.prepare(src, tmp_path / "alias", train_on_prompt=True, progress=False)
    ds = gristmill.open_dataset(tmp_path / "alias")
    ids, mask = ds.documents.document(0)
    assert ds.tokenizer.decode(ids) == "Add\n\n2 and 2\n4<|endoftext|>"
    assert mask is None  # every token carries loss: no mask is stored
    # Forcing a format reads prompt/completion records as text only if they have a text field.
    with pytest.raises(DataError, match="field 'text': missing"):
        gristmill.prepare(src, tmp_path / "forced", format="text", progress=False)


def test_null_optional_fields_and_unknown_field_names(tmp_path, write_jsonl):
    src = write_jsonl([{"instruction": "Say hi", "input": None, "system": None, "output": "hi"}])
    gristmill.prepare(src, tmp_path / "ok", progress=False)
    ds = gristmill.open_dataset(tmp_path / "ok")
    assert ds.tokenizer.decode(ds.documents.document(0)[0]) == "Say hi\nhi<|endoftext|>"
    with pytest.raises(DataError, match="--fields names question, but the prompt-completion"):
        gristmill.prepare(src, tmp_path / "bad", fields={"question": "prompt"}, progress=False)


def test_every_asked_for_split_exists_even_if_empty(tmp_path):
    upper = tmp_path / "ONE.JSONL"
    upper.write_text('{"text": "only one"}\n')
    gristmill.prepare(upper, tmp_path / "ds", val_fraction=0.001, progress=False)
    sizes = [len(gristmill.open_dataset(tmp_path / "ds", split=s)) for s in ("train", "val")]
    assert sorted(sizes) == [0, 1]  # the one record went to one split; the other is empty
    assert main(["inspect", str(tmp_path / "ds")]) == 0


def test_overwrite_never_deletes_a_directory_gristmill_did_not_write(tmp_path, write_jsonl):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "manifest.json").write_text('{"name": "app"}')
    (project / "src" / "main.py").write_text("print('hi')")
    with pytest.raises(DatasetError, match="not a gristmill dataset; choose a new or empty -o"):
        gristmill.prepare(write_jsonl([{"text": "x"}]), project, overwrite=True, progress=False)
    assert (project / "src" / "main.py").read_text() == "print('hi')"


def test_a_bad_option_or_format_leaves_no_output(tmp_path, write_jsonl):
    src = write_jsonl([{"text": "x"}])
    for options in (
        {"format": "nope"},
        {"tokenizer": "nope"},
        {"val_fraction": 1.5},
        {"format": "text", "fields": {"prompt": "q"}},
    ):
        with pytest.raises(gristmill.GristmillError):
            gristmill.prepare(src, tmp_path / "out", progress=False, **options)
        assert not (tmp_path / "out").exists()


def test_numpy_and_negative_numbers_as_options(tmp_path, write_jsonl):
    src = write_jsonl([{"text": f"t{i}"} for i in range(50)])
    manifest = gristmill.prepare(
        src, tmp_path / "a", seed=np.int64(-3), val_fraction=np.float32(0.5), progress=False
    )
    assert manifest["provenance"]["config"]["seed"] == -3
    assert 0 < manifest["splits"]["val"]["num_documents"] < 50


def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    gristmill.prepare(path, tmp_path / "out", progress=False)
    ds = gristmill.open_dataset(tmp_path / "out")
    assert ds.tokenizer.decode(ds.documents.document(0)[0]) == "first<|endoftext|>"


class ShiftedBytes(ByteTokenizer):
    """Byte ids moved past 65535, so that the dataset needs uint32; or, broken, past its vocab."""

    def __init__(self, shift: int, vocab_size: int):
        super().__init__()
        self.shift, self.vocab_size = shift, vocab_size
        self.eos_id = self.pad_id = self.bos_id = vocab_size - 1

    def encode_batch(self, texts, *, offsets=False):
        ids, offs = super().encode_batch(texts, offsets=offsets)
        return [i.astype(np.int64) + self.shift for i in ids], offs

    def decode(self, ids):
        ids = np.asarray(ids)
        return bytes((ids[ids != self.eos_id] - self.shift).astype(np.uint8)).decode()


def shifted_plugin(name: str, shift: int, vocab_size: int):
    record = TokenizerType(
        name=name,
        description="test tokenizer",
        factory=lambda spec, **options: ShiftedBytes(shift, vocab_size),
        load=lambda directory, config, **options: ShiftedBytes(shift, vocab_size),
    )
    return type("P", (), {"gristmill_tokenizers": staticmethod(hookimpl(lambda: [record]))})


def test_large_vocabularies_are_stored_as_uint32(tmp_path, write_jsonl, gristmill_register):
    gristmill_register(shifted_plugin("wide", 70_000, 70_300))
    src = write_jsonl([{"text": "héllo wörld"}])
    gristmill.prepare(src, tmp_path / "out", tokenizer="wide", progress=False)
    ds = gristmill.open_dataset(tmp_path / "out")
    assert ds.manifest["dtype"] == "uint32"
    ids, _ = ds.documents.document(0)
    assert ids.dtype == np.dtype("<u4") and int(ids.max()) == 70_299
    assert ds.tokenizer.decode(ids) == "héllo wörld"


def test_ids_outside_the_vocabulary_are_refused(tmp_path, write_jsonl, gristmill_register):
    gristmill_register(shifted_plugin("broken-tok", 1000, 300))
    src = write_jsonl([{"text": "x"}])
    with pytest.raises(DataError, match=r"data.jsonl:1: the tokenizer returned ids outside"):
        gristmill.prepare(src, tmp_path / "out", tokenizer="broken-tok", progress=False)


def test_inspect_an_unknown_split(tmp_path, write_jsonl, capsys):
    gristmill.prepare(write_jsonl([{"text": "x"}]), tmp_path / "out", progress=False)
    assert main(["inspect", str(tmp_path / "out"), "--split", "nope"]) == 2
    assert "no split 'nope'; it has train" in capsys.readouterr().err


def test_a_tokenizer_file_with_an_unclaimed_name_says_which_names_count(tmp_path, write_jsonl):
    vocab = tmp_path / "bpe32k.json"
    vocab.write_text("{}")
    manager = get_manager()
    suffixes = [s for rec in manager.components(TokenizerType).values() for s in rec.suffixes]
    with pytest.raises(
        gristmill.GristmillError, match=r"no tokenizer reads the file .*bpe32k\.json"
    ) as caught:
        gristmill.prepare(write_jsonl([{"text": "x"}]), tmp_path / "out", tokenizer=str(vocab))
    assert all(s in str(caught.value) for s in suffixes)  # tokenizer.json where hf is installed


# --- long lines: memory stays flat ---------------------------------------------------------------


def write_long_line(path: Path, size: int) -> Path:
    """A JSON Lines file whose second line is ``size`` bytes long, written a MiB at a time."""
    with open(path, "wb") as f:
        f.write(b'{"text": "first"}\n{"text": "')
        for _ in range(size >> 20):
            f.write(b"a" * (1 << 20))
        f.write(b'"}\n{"text": "last"}\n')
    return path


def test_planning_streams_past_a_long_line(tmp_path):
    """Cutting the input into tasks once read the line under each cut whole (f.readline()): a
    64 MiB line cost 64 MiB before the reader rejected it in bounded memory."""
    path = write_long_line(tmp_path / "data.jsonl", 64 << 20)
    [source] = open_sources([str(path)], get_manager(), max_record_bytes=1000)
    tracemalloc.start()
    try:
        chunks = plan_chunks([(0, source)], 8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak / 2**20:.0f} MiB"
    # No line cut: every cut falls inside the long line and moves to the next line's start.
    size = path.stat().st_size
    parts = [part for chunk in chunks for _, part in chunk.parts]
    assert [p.byte_range for p in parts] == [(0, size - 17, 1), (size - 17, size, 3)]


PEAK_RSS = """
import resource, sys
import gristmill
gristmill.prepare(sys.argv[1], sys.argv[2], on_error="skip", max_record_bytes=1000,
                  workers=1, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_of_prepare(path: Path, out: Path) -> int:
    """Peak resident memory, in bytes, of a fresh process that prepares ``path``."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1]) << 10  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_prepare_of_a_long_line_costs_no_more_memory_than_a_short_one(tmp_path):
    """The issue's case end to end: a 200 MB line took 348 MB with --max-record-bytes 1000."""
    short = peak_rss_of_prepare(write_long_line(tmp_path / "short.jsonl", 1 << 20), tmp_path / "a")
    long = peak_rss_of_prepare(write_long_line(tmp_path / "long.jsonl", 128 << 20), tmp_path / "b")
    assert long - short < 32 << 20, f"{short >> 20} MiB, then {long >> 20} MiB"


@given(
    data=st.binary(max_size=80).map(lambda b: bytes(b"a\n"[x % 2] for x in b)),
    pieces=st.integers(1, 9),
    chunk=st.sampled_from([1, 2, 5, 1 << 20]),
)
def test_line_ranges_cut_at_line_starts_whatever_the_read_size(
    tmp_path_factory, data, pieces, chunk
):
    path = tmp_path_factory.mktemp("ranges") / "data.jsonl"
    path.write_bytes(data)
    with patch.object(gristmill.plugin.files, "CHUNK", chunk):
        ranges = line_ranges(str(path), pieces)
    assert 1 <= len(ranges) <= pieces
    assert [r[0] for r in ranges] == [0] + [r[1] for r in ranges[:-1]]
    assert ranges[-1][1] == len(data)
    for start, _, first in ranges:
        assert start == 0 or data[start - 1 : start] == b"\n"
        assert first == data[:start].count(b"\n") + 1


# --- compressed files: what follows the last complete member --------------------------------------


def compressed(suffix: str, data: bytes) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data, mtime=0)
    zstandard = pytest.importorskip("zstandard")  # the min envs lack the zstd extra
    return zstandard.ZstdCompressor().compress(data)


RECORDS = b"".join(b'{"text": "record %d"}\n' % i for i in range(100))


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
@pytest.mark.parametrize("trailing", [b"\x00not a member\x00" * 4, b"\x00" * 512, b"x"])
def test_bytes_after_a_complete_archive_are_named_as_trailing_not_damage(
    tmp_path, suffix, trailing
):
    """They were called "corrupt compressed data; the file is damaged" though every record
    was read: now the error says how many bytes follow where the archive ends, and that
    nothing before them was lost."""
    good = compressed(suffix, RECORDS)
    path = tmp_path / f"data.jsonl{suffix}"
    path.write_bytes(good + trailing)
    [source] = open_sources([str(path)], get_manager())
    records = []
    with pytest.raises(DataError) as caught:
        for record, _ in source.records():
            records.append(record)
    assert len(records) == 100
    message = str(caught.value)
    assert message.startswith(f"{path}: {len(trailing):,} trailing bytes after the end of the")
    assert f"at byte {len(good):,}" in message and "every record before them was read" in message
    assert "damaged;" not in message and "corrupt" not in message

    manifest = gristmill.prepare(path, tmp_path / "ds", on_error="skip", progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 100
    assert manifest["provenance"]["skipped"] == {"unreadable-rest": 1}


@pytest.mark.parametrize("suffix", [".gz", ".zst"])
def test_a_damaged_member_after_a_complete_one_is_still_damage(tmp_path, suffix):
    second = bytearray(compressed(suffix, RECORDS))
    second[len(second) // 2] ^= 0xFF  # inside the compressed data: the magic number is intact
    path = tmp_path / f"data.jsonl{suffix}"
    path.write_bytes(compressed(suffix, RECORDS) + bytes(second))
    [source] = open_sources([str(path)], get_manager())
    with pytest.raises(DataError, match="corrupt compressed data"):
        list(source.records())
