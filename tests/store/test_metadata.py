"""Metadata per document: kept at prepare time as typed columns, the same for any number of
workers, served back exactly, checked by verify."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.cli.main import main
from gristmill.errors import DataError, DatasetError
from gristmill.layout import METADATA_DIR
from gristmill.store.metadata import NULL_INT
from gristmill.store.verify import verify
from tests.helpers import tree_bytes

# One record of each kind of value, and the metadata a reader gets back for it.
RECORDS = [
    {
        "text": "alpha beta",
        "url": "https://a.example/1",
        "metadata": {"lang": "en", "score": 0.25, "n": 3, "ok": True, "src": {"site": "a"}},
    },
    {
        "text": "gamma",
        "url": "https://a.example/2",
        "metadata": {"lang": "fr", "score": 1.5, "n": -7, "ok": False, "tags": ["x", 2]},
    },
    {"text": "delta epsilon", "metadata": {"lang": None, "score": None, "n": 2**40}},
    {"text": "no metadata at all"},
    {"text": "nested deeper", "metadata": {"src": {"site": "b", "rank": {"top": 1}}}},
]
EXPECTED = [
    {
        "lang": "en",
        "n": 3,
        "ok": True,
        "score": 0.25,
        "src.rank.top": None,
        "src.site": "a",
        "tags": None,
        "url": "https://a.example/1",
    },
    {
        "lang": "fr",
        "n": -7,
        "ok": False,
        "score": 1.5,
        "src.rank.top": None,
        "src.site": None,
        "tags": '["x", 2]',
        "url": "https://a.example/2",
    },
    {
        "lang": None,
        "n": 2**40,
        "ok": None,
        "score": None,
        "src.rank.top": None,
        "src.site": None,
        "tags": None,
        "url": None,
    },
    dict.fromkeys(["lang", "n", "ok", "score", "src.rank.top", "src.site", "tags", "url"], None),
    {
        "lang": None,
        "n": None,
        "ok": None,
        "score": None,
        "src.rank.top": 1,
        "src.site": "b",
        "tags": None,
        "url": None,
    },
]
TYPES = {
    "lang": "string",
    "n": "int",
    "ok": "bool",
    "score": "float",
    "src.rank.top": "int",
    "src.site": "string",
    "tags": "string",
    "url": "string",
}


@pytest.fixture
def typed(tmp_path, write_jsonl):
    out = tmp_path / "ds"
    gristmill.prepare(write_jsonl(RECORDS), out, metadata_columns=["url"], progress=False)
    return out


def test_every_kind_of_value_comes_back_as_it_was(typed):
    ds = gristmill.open_dataset(typed)
    assert ds.metadata_columns == TYPES
    assert [ds.metadata(doc) for doc in range(len(RECORDS))] == EXPECTED
    # The stored form: floats with NaN, ints with the smallest int64, bools and codes with -1.
    assert np.isnan(ds.metadata_values("score")[2:]).all()
    assert ds.metadata_values("n").tolist() == [3, -7, 2**40, NULL_INT, NULL_INT]
    assert ds.metadata_values("ok").tolist() == [1, 0, -1, -1, -1]
    codes = ds.metadata_values("lang")
    assert codes.dtype == np.int32 and codes.tolist() == [0, 1, -1, -1, -1]
    assert ds.metadata_code("lang", "fr") == 1 and ds.metadata_code("lang", "de") == -1
    assert ds.decode_metadata("lang", codes) == ["en", "fr", None, None, None]
    assert ds.metadata_values("url", [1, 0]).tolist() == [1, 0]


def test_the_manifest_lists_and_hashes_every_metadata_file(typed):
    manifest = json.loads((typed / "manifest.json").read_text())
    assert {key: c["type"] for key, c in manifest["metadata"].items()} == TYPES
    assert manifest["metadata"]["lang"]["distinct"] == 2
    listed = {
        *(
            c[name]["path"]
            for c in manifest["metadata"].values()
            for name in ("strings", "offsets")
            if name in c
        ),
        *(e["path"] for e in manifest["splits"]["train"]["metadata"].values()),
    }
    on_disk = {p.relative_to(typed).as_posix() for p in (typed / METADATA_DIR).rglob("*.*")}
    assert listed == on_disk
    # Floats are not counted by value; a flattened key is counted under its name.
    stats = manifest["stats"]["metadata"]
    assert "score" not in stats and stats["src.site"].keys() == {"a", "b"}
    assert verify(typed) == []


def test_a_tampered_metadata_file_is_found(typed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(typed, copy)
    values = copy / METADATA_DIR / "train" / "0000.npy"  # lang's codes
    data = bytearray(values.read_bytes())
    data[-4] ^= 1
    values.write_bytes(bytes(data))
    [problem] = verify(copy)
    assert problem.where == f"{METADATA_DIR}/train/0000.npy" and "SHA-256" in problem.message
    with pytest.raises(DatasetError, match=r"0000\.npy"):
        gristmill.open_dataset(copy).metadata(0)
    (copy / METADATA_DIR / "extra.npy").write_bytes(b"x")
    assert any("not listed" in p.message for p in verify(copy))


def test_a_metadata_file_of_the_wrong_shape_is_found_even_with_its_hash_updated(typed, tmp_path):
    from gristmill.store.manifest import file_entry, write_manifest

    copy = tmp_path / "copy"
    shutil.copytree(typed, copy)
    relative = f"{METADATA_DIR}/train/0000.npy"
    np.save(copy / relative, np.array([0, 5], np.int32))  # two values, a code past the table
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["metadata"]["lang"] = file_entry(copy, relative)
    write_manifest(copy, manifest)
    [problem] = verify(copy)
    assert problem.where == relative and "shape (2,)" in problem.message


def test_mixed_types_join_across_tasks(tmp_path, write_jsonl):
    # Tasks of about one record each: every column's type is joined across tasks.
    records = [
        {"text": "a" * 40, "metadata": {"num": 1, "mix": 1, "flag": True}},
        {"text": "b" * 40, "metadata": {"num": 2.5, "mix": "one", "flag": 0}},
        {"text": "c" * 40, "metadata": {"num": None, "mix": 2.0, "flag": None}},
    ]
    out = tmp_path / "ds"
    gristmill.prepare(write_jsonl(records), out, task_bytes=60, progress=False, workers=1)
    ds = gristmill.open_dataset(out)
    assert ds.metadata_columns == {"flag": "string", "mix": "string", "num": "float"}
    assert [ds.metadata(d) for d in range(3)] == [
        {"flag": "true", "mix": "1", "num": 1.0},  # any other mix: strings, others as JSON text
        {"flag": "0", "mix": "one", "num": 2.5},
        {"flag": None, "mix": "2.0", "num": None},
    ]


def test_many_distinct_strings_over_workers_are_byte_identical(tmp_path, write_jsonl):
    records = [
        {
            "text": f"document {i} " + "word " * (i % 17),
            "url": f"https://example.com/{i}",
            "metadata": {"lang": ["en", "fr", "de"][i % 3], "score": i / 7, "i": i},
        }
        for i in range(3000)
    ]
    records += records[:100]  # duplicates, dropped with their metadata
    src = write_jsonl(records)
    options = dict(
        metadata_columns=["url"],
        task_bytes=20_000,
        val_fraction=0.2,
        dedup=True,
        progress=False,
    )
    gristmill.prepare(src, tmp_path / "one", workers=1, **options)
    gristmill.prepare(src, tmp_path / "two", workers=2, **options)
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["metadata"]["url"]["distinct"] == 3000
    seen = []
    for split in ("train", "val"):
        ds = gristmill.open_dataset(tmp_path / "one", split)
        ids = ds.metadata_values("i")
        urls = ds.decode_metadata("url", ds.metadata_values("url"))
        assert urls == [f"https://example.com/{i}" for i in ids.tolist()]
        assert ds.decode_metadata("lang", ds.metadata_values("lang")) == [
            ["en", "fr", "de"][i % 3] for i in ids.tolist()
        ]
        assert np.allclose(ds.metadata_values("score"), ids / 7)
        for doc in (0, len(ids) - 1):  # each document's tokens are its record's
            text = ds.tokenizer.decode(ds.documents.document(doc)[0])
            assert text.startswith(f"document {ids[doc]} ")
        seen += ids.tolist()
    assert sorted(seen) == list(range(3000))  # every record once: the duplicates went


def test_a_key_given_twice_is_a_bad_record(tmp_path, write_jsonl):
    records = [
        {"text": "kept", "metadata": {"a": {"b": 1}}},
        {"text": "clash", "metadata": {"a": {"b": 1}, "a.b": 2}},
        {"text": "column clash", "url": "u", "metadata": {"url": "v"}},
    ]
    src = write_jsonl(records)
    with pytest.raises(DataError, match=r"metadata key 'a\.b' is given twice"):
        gristmill.prepare(src, tmp_path / "fail", progress=False)
    manifest = gristmill.prepare(
        src, tmp_path / "ds", metadata_columns=["url"], on_error="skip", progress=False
    )
    assert manifest["provenance"]["skipped"] == {
        "metadata-key-clash:a.b": 1,
        "metadata-key-clash:url": 1,
    }
    assert gristmill.open_dataset(tmp_path / "ds").metadata(0) == {"a.b": 1, "url": None}


def test_without_metadata_nothing_new_is_written(tmp_path, write_jsonl):
    out = tmp_path / "ds"
    manifest = gristmill.prepare(write_jsonl([{"text": "plain"}]), out, progress=False)
    assert "metadata" not in manifest and not (out / METADATA_DIR).exists()
    assert "metadata" not in manifest["splits"]["train"]
    ds = gristmill.open_dataset(out)
    assert ds.metadata_columns == {} and ds.metadata(0) == {}
    with pytest.raises(KeyError, match="no metadata column 'lang'"):
        ds.metadata_values("lang")


def test_the_option_reaches_the_cli_and_the_config_file(tmp_path, write_jsonl):
    src = write_jsonl([{"text": "x", "url": "u1", "score": 0.5}])
    assert (
        main(
            [
                "prepare",
                str(src),
                "-o",
                str(tmp_path / "cli"),
                "--metadata-columns",
                "url,score",
                "--no-progress",
            ]
        )
        == 0
    )
    config = tmp_path / "gristmill.toml"
    config.write_text(
        f'[prepare]\nsources = ["{src}"]\noutput = "{tmp_path / "cfg"}"\n'
        'metadata_columns = ["url", "score"]\nprogress = false\n'
    )
    gristmill.from_config(config).prepare()
    for out in ("cli", "cfg"):
        assert gristmill.open_dataset(tmp_path / out).metadata(0) == {"score": 0.5, "url": "u1"}
    # Not given, it leaves the fingerprint as it was before the option existed.
    plain = gristmill.prepare(src, tmp_path / "plain", progress=False)
    named = gristmill.prepare(src, tmp_path / "named", metadata_columns=["url"], progress=False)
    assert "metadata_columns" not in plain["provenance"]["config"]
    assert named["provenance"]["config"]["metadata_columns"] == ["url"]


def test_nan_reads_as_null(tmp_path, write_jsonl):
    src = write_jsonl(['{"text": "x", "metadata": {"f": NaN, "g": 1.0}}'])
    gristmill.prepare(src, tmp_path / "ds", progress=False)
    ds = gristmill.open_dataset(tmp_path / "ds")
    assert ds.metadata(0) == {"f": None, "g": 1.0}
    assert not math.isnan(ds.metadata_values("g")[0])


def test_metadata_is_read_without_holding_it_in_memory(typed):
    ds = gristmill.open_dataset(typed)
    assert isinstance(ds.metadata_values("n"), np.memmap)  # the whole column: a map of the file


def test_inspect_shows_the_columns_and_their_tables(typed, capsys):
    assert main(["inspect", str(typed)]) == 0
    out = capsys.readouterr().out
    assert (
        "metadata columns per document: lang (string, 2 distinct), n (int), ok (bool), "
        "score (float), src.rank.top (int), src.site (string, 2 distinct), tags (string, "
        "1 distinct), url (string, 2 distinct)"
    ) in out


def test_the_format_pages_reader_reads_the_columns_open_dataset_serves(typed):
    text = (Path(__file__).parents[2] / "docs" / "format.md").read_text(encoding="utf-8")
    block = text[text.index("def column(root") :]
    namespace: dict = {}
    exec("import json, os\nimport numpy as np\n" + block[: block.index("```")], namespace)
    ds = gristmill.open_dataset(typed)
    for key in ds.metadata_columns:
        read = namespace["column"](str(typed), key)
        if ds.metadata_columns[key] == "string":
            assert read == ds.decode_metadata(key, ds.metadata_values(key))
        else:
            assert np.array_equal(read, ds.metadata_values(key), equal_nan=True)


@pytest.mark.parametrize("block", [7, 1 << 20])
def test_value_counts_keep_the_first_hundred_values_and_count_the_rest(
    tmp_path, write_jsonl, monkeypatch, block
):
    import gristmill.store.metadata as metadata

    monkeypatch.setattr(metadata, "COUNT_BLOCK", block)  # blocks of documents, or all at once
    records = [
        {"text": "x" * (i % 9 + 1), "metadata": {"k": (i * 7) % 150, "s": f"v{i % 130}"}}
        for i in range(400)
    ]
    out = tmp_path / "ds"
    manifest = gristmill.prepare(write_jsonl(records), out, val_fraction=0.3, progress=False)
    expected: dict[str, dict[str, list[int]]] = {}
    for split in ("train", "val"):
        ds = gristmill.open_dataset(out, split)
        lengths = ds.documents.lengths()
        for doc in range(len(lengths)):
            for key, value in ds.metadata(doc).items():
                counted = expected.setdefault(key, {})
                label = value if isinstance(value, str) else json.dumps(value)
                if label not in counted and len(counted) >= 100:
                    label = "(other)"
                entry = counted.setdefault(label, [0, 0])
                entry[0] += 1
                entry[1] += int(lengths[doc])
    assert manifest["stats"]["metadata"] == {
        key: {v: {"documents": d, "tokens": t} for v, (d, t) in sorted(values.items())}
        for key, values in sorted(expected.items())
    }
