"""Sources: the same records from every layout, splitting, compression, and the skip policy."""

from __future__ import annotations

import gzip
import importlib.util
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import DataError, MissingDependencyError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Rejected
from gristmill.plugin.manager import get_manager
from gristmill.store.convert import convert
from tests.helpers import examples, read_all

HAS_ZSTD = importlib.util.find_spec("zstandard") is not None


def open_one(path, **options):
    [source] = open_sources([str(path)], get_manager(), **options)
    return source


def test_the_sample_source_splits_by_module():
    [source] = open_sources(["sample:stdlib"], get_manager())
    parts = source.split(4)
    assert len(parts) == 4
    whole = [w.origin for _, w in source.records()]
    assert [w.origin for part in parts for _, w in part.records()] == whole


def test_json_source_errors(tmp_path):
    cases = {
        '[{"text": "a"}, {"text": "b"}': "the array is not closed with ]",
        '[{"text": "a"} {"text": "b"}]': "expected , or ] between array items",
        '[{"text": "a"}]\n[1]': "unexpected data after the closing ]",
        '{"text": "a"}\n{"text": "b", oops}': "malformed JSON at line 2: Expecting property name",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.json"
        path.write_text(text)
        items = read_all(open_one(path))
        assert isinstance(items[-1], Rejected) and message in items[-1].message, text
        assert items[0] == {"text": "a"}


def test_a_record_over_the_size_limit_is_rejected_not_read(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "' + "x" * 5000 + '"}\n{"text": "after"}\n')
    items = read_all(open_one(path, max_record_bytes=1000))
    assert items[0] == {"text": "ok"} and items[2] == {"text": "after"}
    assert items[1].reason == "too-large" and items[1].where.line == 2
    array = tmp_path / "big.json"
    array.write_text('[{"text": "ok"}, {"text": "' + "x" * 5000 + '"}]')
    assert read_all(open_one(array, max_record_bytes=1000))[1].reason == "too-large"
    with pytest.raises(DataError, match=r"big.jsonl:2: the line is longer than 1,000 bytes"):
        gristmill.prepare(path, tmp_path / "out", max_record_bytes=1000, progress=False)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        (".gz", gzip.compress),
        pytest.param(".zst", _zstd, marks=pytest.mark.skipif(not HAS_ZSTD, reason="no zstandard")),
    ],
)
def test_a_truncated_archive_fails_or_keeps_what_came_before(tmp_path, suffix, compress):
    lines = b"".join(b'{"text": "record %d"}\n' % i for i in range(20000))
    packed = compress(lines)
    path = tmp_path / f"cut.jsonl{suffix}"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=rf"cut.jsonl{suffix}: the compressed file ends early"):
        gristmill.prepare(path, tmp_path / "a", progress=False)
    manifest = gristmill.prepare(path, tmp_path / "b", on_error="skip", progress=False)
    kept = manifest["splits"]["train"]["num_documents"]
    assert 0 < kept < 20000
    assert manifest["provenance"]["skipped"] == {"unreadable-rest": 1}
    ds = gristmill.open_dataset(tmp_path / "b")
    assert ds.tokenizer.decode(ds.documents.document(kept - 1)[0]).startswith(f"record {kept - 1}")


@pytest.mark.skipif(HAS_ZSTD, reason="zstandard is installed in this environment")
def test_zstd_without_the_library_names_the_extra(tmp_path):
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(MissingDependencyError, match=r"pip install 'gristmill\[zstd\]'"):
        read_all(open_one(path))


def test_skip_counts_every_bad_record_and_keeps_every_good_one(tmp_path, write_jsonl, capsys):
    good = [{"text": f"good {i}"} for i in range(30)]
    bad = [
        "{not json",
        b'{"text": "caf\xe9"}',
        '{"body": "no text field"}',
        '{"text": 7}',
        '{"text": null}',
        '{"text": "  "}',
        "[1, 2]",
        '{"text": "\\ud800"}',
        '{"text": "' + "y" * 3000 + '"}',
    ]
    lines = [*good[:10], *bad[:5], *good[10:20], *bad[5:], *good[20:]]
    src = write_jsonl(lines)
    out = tmp_path / "ds"
    code = main(
        ["prepare", str(src), "-o", str(out), "--on-error", "skip", "--max-record-bytes", "2000"]
    )
    assert code == 0
    assert "skipped 9 record(s)" in capsys.readouterr().err
    ds = gristmill.open_dataset(out)
    texts = [ds.tokenizer.decode(ds.documents.document(i)[0]) for i in range(len(ds))]
    assert texts == [r["text"] + "<|endoftext|>" for r in good]
    skipped = ds.manifest["provenance"]["skipped"]
    assert skipped == {
        "empty-field:text": 1,
        "malformed-json": 1,
        "missing-field:text": 1,
        "not-an-object": 1,
        "not-utf8": 1,
        "too-large": 1,
        "untokenizable": 1,
        "wrong-type:text": 2,
    }
    rejects = [
        json.loads(line) for line in (tmp_path / "ds.rejects.jsonl").read_text().splitlines()
    ]
    # Source-level rejects are written as read, tokenizer-level ones per batch: compare as a set.
    assert sorted(int(r["where"].rsplit(":", 1)[1]) for r in rejects) == [
        11,
        12,
        13,
        14,
        15,
        26,
        27,
        28,
        29,
    ]
    missing = next(r for r in rejects if r["reason"] == "missing-field:text")
    assert missing["raw"] == '{"body": "no text field"}' and missing["field"] == "text"


def test_the_val_split_depends_on_content_not_order(tmp_path, write_jsonl):
    records = [{"text": f"document number {i}"} for i in range(400)]
    a = write_jsonl(records, "a.jsonl")
    b = write_jsonl(records[::-1], "b.jsonl")

    def val_texts(src, out):
        gristmill.prepare(src, out, val_fraction=0.2, seed=7, progress=False)
        ds = gristmill.open_dataset(out, split="val")
        return {ds.tokenizer.decode(ds.documents.document(i)[0]) for i in range(len(ds))}

    forward, backward = val_texts(a, tmp_path / "fa"), val_texts(b, tmp_path / "fb")
    assert forward == backward and 40 < len(forward) < 120


def test_normalisation_and_dedup(tmp_path, write_jsonl):
    decomposed, composed = "Cafe\u0301 au lait", "Caf\u00e9 au lait"
    src = write_jsonl([{"text": decomposed}, {"text": composed}, {"text": "other"}])

    def docs(out, **options):
        manifest = gristmill.prepare(src, out, progress=False, **options)
        ds = gristmill.open_dataset(out)
        texts = [ds.tokenizer.decode(ds.documents.document(i)[0]) for i in range(len(ds))]
        return texts, manifest["provenance"]["duplicates"]

    assert docs(tmp_path / "a") == ([composed + "<|endoftext|>"] * 2 + ["other<|endoftext|>"], 0)
    assert docs(tmp_path / "b", dedup=True) == (
        [composed + "<|endoftext|>", "other<|endoftext|>"],
        1,
    )
    raw, _ = docs(tmp_path / "c", normalize=False, dedup=True)
    assert raw == [decomposed + "<|endoftext|>", composed + "<|endoftext|>", "other<|endoftext|>"]


def test_metadata_is_summarised_in_the_manifest(tmp_path, write_jsonl, capsys):
    records = [
        {"text": "aa", "metadata": {"lang": "en", "score": 3, "nested": {"x": 1}}},
        {"text": "bbbb", "metadata": {"lang": "de"}},
        {"text": "cc", "metadata": {"lang": "en"}},
        {"text": "no metadata"},
    ]
    manifest = gristmill.prepare(write_jsonl(records), tmp_path / "out", progress=False)
    assert manifest["stats"]["metadata"] == {
        "lang": {"de": {"documents": 1, "tokens": 5}, "en": {"documents": 2, "tokens": 6}},
        "nested.x": {"1": {"documents": 1, "tokens": 3}},  # nested objects are flattened
        "score": {"3": {"documents": 1, "tokens": 3}},
    }
    assert main(["inspect", str(tmp_path / "out")]) == 0
    assert "metadata lang: en (2 docs, 6 tokens), de (1 docs, 5 tokens)" in capsys.readouterr().out


def test_a_failed_skip_run_leaves_no_half_reject_file(tmp_path, write_jsonl):
    src = write_jsonl(["{bad", {"title": "no known format"}])
    with pytest.raises(DataError, match="cannot tell the format"):
        gristmill.prepare(src, tmp_path / "ds", on_error="skip", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds"]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


# Each example writes a file with huge integers and NaN, the slow path of the parser.
@settings(max_examples=examples(0.5), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5), max_size=6))
def test_jsonl_lines_parse_exactly_as_the_standard_parser_reads_them(tmp_path, records):
    # Big integers, floats, escapes, NaN and lone surrogates: the fast parser must change nothing.
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(records)]
    lines += ['{"n": NaN, "big": 123456789012345678901234567890}', '{"s": "\\ud800"}']
    path = tmp_path / "values.jsonl"
    path.write_bytes(("\ufeff" + "\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    (source,) = open_sources([str(path)], get_manager())
    got = [item[0] for item in source.records()]
    want = [json.loads(line) for line in lines]
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert [type(v) for r in got for v in r.values()] == [type(v) for r in want for v in r.values()]


# --- what a directory or glob never reads: datasets, the run's own output ------------------------


def raw_tree(tmp_path):
    """``data/`` with one JSON Lines file holding 3 good records and a bad one."""
    data = tmp_path / "data"
    data.mkdir()
    lines = ['{"text": "one"}', '{"text": "two"}', "not json", '{"text": "three"}']
    (data / "a.jsonl").write_text("\n".join(lines) + "\n")
    return data


def source_specs(manifest) -> list[str]:
    return [s["spec"] for s in manifest["provenance"]["sources"]]


def test_an_output_inside_a_directory_source_is_not_read_again(tmp_path):
    """The second run read its own manifest, tokenizer and reject file as input, and crashed
    with --overwrite."""
    data = raw_tree(tmp_path)
    out = data / "out"
    first = gristmill.prepare(data, out, on_error="skip", progress=False)
    assert (data / "out.rejects.jsonl").exists()
    again = gristmill.prepare(data, out, on_error="skip", progress=False)
    assert again == first  # the same input: up to date, nothing done
    redone = gristmill.prepare(data, out, on_error="skip", seed=1, overwrite=True, progress=False)
    assert source_specs(redone) == [str(data / "a.jsonl")]
    assert redone["splits"]["train"]["num_documents"] == 3
    assert redone["provenance"]["skipped"] == {"malformed-json": 1}


def test_a_convert_output_inside_a_directory_source_is_not_read_again(tmp_path):
    data = raw_tree(tmp_path)
    out = data / "all.jsonl"
    assert convert(data, out, on_error="skip")["records"] == 3
    assert (data / "all.jsonl.rejects.jsonl").exists()
    assert convert(data, out, on_error="skip", overwrite=True)["records"] == 3


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("data", ["data/a.jsonl", "data/other/manifest.json"]),
        ("data/**/*.json*", ["data/a.jsonl", "data/other/manifest.json"]),
        ("data/*/*", ["data/other/manifest.json"]),
    ],
)
def test_directories_and_globs_pass_over_gristmill_datasets(
    tmp_path, monkeypatch, pattern, expected
):
    data = raw_tree(tmp_path)
    gristmill.prepare(data, data / "done", on_error="skip", progress=False)
    unfinished = data / "unfinished"
    unfinished.mkdir()
    (unfinished / ".gristmill-incomplete").write_text("{}")
    (unfinished / "part.jsonl").write_text('{"text": "half written"}\n')
    # Another tool's manifest.json is data like any other.
    (data / "other").mkdir()
    (data / "other" / "manifest.json").write_text('{"format": "not ours", "text": "kept"}')
    monkeypatch.chdir(tmp_path)
    found = [s.spec for s in open_sources([pattern], get_manager())]
    assert found == expected


@pytest.mark.parametrize("inside", ["", "manifest.json", "tokenizer/byte.json"])
def test_a_dataset_given_as_a_source_is_refused_saying_what_to_do(tmp_path, inside):
    data = raw_tree(tmp_path)
    ds = tmp_path / "ds"
    gristmill.prepare(data, ds, on_error="skip", progress=False)
    with pytest.raises(DataError, match="is a gristmill dataset") as caught:
        gristmill.prepare(ds / inside, tmp_path / "again", progress=False)
    assert str(ds) in str(caught.value)
    assert "open_dataset" in str(caught.value) and "gristmill export" in str(caught.value)
    assert not (tmp_path / "again").exists()


def test_a_symlink_loop_as_a_source_is_named_as_one(tmp_path):
    """It read "not found"."""
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=r"loop.jsonl' is a symbolic link loop"):
        open_sources([str(loop)], get_manager())
    dangling = tmp_path / "gone.jsonl"
    dangling.symlink_to(tmp_path / "moved.jsonl")
    with pytest.raises(DataError, match=r"gone.jsonl' is a symbolic link to .*moved.jsonl"):
        open_sources([str(dangling)], get_manager())


@pytest.mark.parametrize("spec", ["data", "data/*.jsonl"])
def test_a_broken_link_in_a_directory_or_glob_is_an_error_not_skipped(tmp_path, monkeypatch, spec):
    data = raw_tree(tmp_path)
    (data / "b.jsonl").symlink_to(data / "b.jsonl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/b.jsonl' is a symbolic link loop"):
        open_sources([spec], get_manager())


def test_a_glob_passes_over_a_dataset_before_looking_at_its_links(tmp_path, monkeypatch):
    data = raw_tree(tmp_path)
    gristmill.prepare(data, data / "done", on_error="skip", progress=False)
    (data / "done" / "stale.jsonl").symlink_to(data / "gone.jsonl")
    monkeypatch.chdir(tmp_path)
    assert [s.spec for s in open_sources(["data/**/*.jsonl"], get_manager())] == ["data/a.jsonl"]
