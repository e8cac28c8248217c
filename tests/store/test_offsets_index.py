"""The offsets index (``index/SPLIT.offsets``): every shard's offsets of a split in one file,
listed and hashed in the manifest. Opening reads it instead of one offsets file a shard, serves
the very samples it served without it, refuses it damaged, falls back to the shards' own files
where it was made of others, and ``verify`` checks it against the files it repeats."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError
from gristmill.layout import INDEX_DIR, MANIFEST
from gristmill.plugin import integrity
from gristmill.store.index import offsets_digest, with_index
from gristmill.store.manifest import (
    INDEX,
    manifest_problems,
    read_manifest,
    write_manifest,
    write_sealed,
)
from gristmill.store.verify import verify

OPEN = {"seq_len": 80, "packer": "first-fit"}


@pytest.fixture(scope="module")
def pristine(prepared_dataset):
    """Text and prompt/completion pairs (masks in some shards), a val split, many shards."""
    text = [{"text": f"doc {i} " + "w" * (i * 7 % 90)} for i in range(120)]
    qa = [{"prompt": f"q{i}?", "completion": " a" * (i % 9 + 1)} for i in range(120)]
    return prepared_dataset({"text": text, "qa": qa}, tokens_per_shard=300, val_fraction=0.2)


def _manifest(ds: Path) -> dict[str, Any]:
    return json.loads((ds / MANIFEST).read_text())


def _indexed(ds: Path) -> dict[str, Any]:
    """Give the dataset ``ds`` its offsets index, as the manifest's writer does."""
    return write_manifest(ds, with_index(ds, read_manifest(ds)))


@pytest.fixture
def ds(pristine, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(pristine, copy)
    _indexed(copy)
    return copy


@pytest.fixture(scope="module")
def unindexed(pristine, tmp_path_factory):
    """The dataset as gristmill wrote it before the offsets index."""
    copy = tmp_path_factory.mktemp("unindexed") / "ds"
    shutil.copytree(pristine, copy)
    shutil.rmtree(copy / INDEX_DIR, ignore_errors=True)
    manifest = _manifest(copy)
    manifest.pop(INDEX, None)
    write_sealed(copy, manifest)
    return copy


@pytest.fixture
def hashed(hashed, tmp_path, monkeypatch) -> list[str]:
    """The files hashed from now on by a process that has checked nothing yet."""
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "_checked", set())
    monkeypatch.setattr(integrity, "_logs", {})
    return hashed


def _samples(path: Path, split: str = "train", **options: Any) -> list[dict[str, np.ndarray]]:
    ds = gristmill.open_dataset(path, split, **{**OPEN, **options})
    return [{key: value.copy() for key, value in ds[i].items()} for i in range(len(ds))]


def _same(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_index_repeats_every_offsets_file_and_verifies(ds):
    manifest = _manifest(ds)
    assert sorted(manifest[INDEX]) == ["train", "val"]
    for split, entry in manifest[INDEX].items():
        shards = manifest["splits"][split]["shards"]
        assert len(shards) > 3 and entry["path"] == f"{INDEX_DIR}/{split}.offsets"
        joined = b"".join((ds / shard["offsets"]["path"]).read_bytes() for shard in shards)
        assert (ds / entry["path"]).read_bytes() == joined
        assert entry["bytes"] == len(joined)
        assert entry["sha256"] == hashlib.sha256(joined).hexdigest()
        assert entry["offsets_digest"] == offsets_digest(shards)
    assert verify(ds) == []


@pytest.mark.parametrize("packer", ["first-fit", "none", "concat-chunk"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_an_indexed_dataset_serves_the_samples_it_served_without(unindexed, ds, packer, split):
    assert INDEX not in _manifest(unindexed) and verify(unindexed) == []
    _same(_samples(ds, split, packer=packer), _samples(unindexed, split, packer=packer))


def _opened_again(path: Path, hashed: list[str], monkeypatch) -> None:
    """Open ``path`` (its plan cached by a first open, which reads the loss masks) as a
    process that has checked nothing yet."""
    gristmill.open_dataset(path, **OPEN)
    monkeypatch.setattr(integrity, "_checked", set())
    monkeypatch.setattr(integrity, "_logs", {})
    shutil.rmtree(os.environ["GRISTMILL_CACHE_DIR"], ignore_errors=True)
    hashed.clear()
    gristmill.open_dataset(path, **OPEN)


def test_opening_hashes_the_index_not_every_offsets_file(ds, hashed, monkeypatch):
    _opened_again(ds, hashed, monkeypatch)
    assert hashed == [f"{INDEX_DIR}/train.offsets"]


def test_a_dataset_without_an_index_reads_every_offsets_file(unindexed, hashed, monkeypatch):
    _opened_again(unindexed, hashed, monkeypatch)
    shards = _manifest(unindexed)["splits"]["train"]["shards"]
    assert sorted(hashed) == sorted(shard["offsets"]["path"] for shard in shards)


def _damage(path: Path, change) -> None:
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(change(data)))


def _flip(data: bytearray) -> bytearray:
    data[len(data) // 2] ^= 0x01  # an offset one off: it may still read as valid
    return data


@pytest.mark.parametrize(
    ("change", "problem"),
    [(_flip, "SHA-256"), (lambda d: d[:-8], "bytes"), (lambda d: d + b"\0" * 8, "bytes")],
)
def test_a_damaged_index_is_refused_and_reported(ds, change, problem):
    where = f"{INDEX_DIR}/train.offsets"
    _damage(ds / where, change)
    with pytest.raises(DatasetError, match=problem) as refused:
        gristmill.open_dataset(ds, **OPEN)
    assert str(refused.value).startswith(str(ds / where))
    [(at, message)] = verify(ds)
    assert at == where and ("SHA-256" in message or "bytes" in message)


def test_a_missing_index_is_refused_and_reported(ds):
    (ds / INDEX_DIR / "train.offsets").unlink()
    with pytest.raises(DatasetError, match="missing"):
        gristmill.open_dataset(ds, **OPEN)
    assert verify(ds) == [(f"{INDEX_DIR}/train.offsets", "missing")]


def test_an_index_of_other_offsets_files_is_passed_over_with_a_warning(ds, caplog):
    """A shard's offsets rewritten (wrong) and the manifest sealed again without a new index:
    opening reads the shards' own files, as without an index, and refuses them as it did."""
    manifest = _manifest(ds)
    entry = manifest["splits"]["train"]["shards"][1]["offsets"]
    path = ds / entry["path"]
    offsets = np.fromfile(path, "<i8")
    offsets[2] = offsets[4]
    offsets.tofile(path)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_sealed(ds, manifest)  # sealed again by hand, no new index
    refused = pytest.raises(DatasetError, match=f"{entry['path']}: offsets go back from")
    with caplog.at_level(logging.WARNING, logger="gristmill"), refused:
        gristmill.open_dataset(ds, **OPEN)
    assert f"{ds / INDEX_DIR / 'train.offsets'}: made of other offsets files" in caplog.text
    problems = verify(ds)
    assert (
        f"{entry['path']}[3]",
        f"offsets go back from {offsets[2]} to {offsets[3]} (document 2)",
    ) in problems
    assert (
        f"{INDEX_DIR}/train.offsets",
        "made of other offsets files than the manifest lists (its offsets_digest differs): a "
        "shard's offsets changed after prepare",
    ) in problems


def test_a_stale_index_over_intact_shards_is_read_around_and_reported(ds, unindexed, caplog):
    manifest = _manifest(ds)
    manifest[INDEX]["train"]["offsets_digest"] = "0" * 64
    write_sealed(ds, manifest)  # sealed again by hand, as a tool of its own would
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        _same(_samples(ds), _samples(unindexed))
    assert f"{ds / INDEX_DIR / 'train.offsets'}: made of other offsets files" in caplog.text
    assert verify(ds) == [
        (
            f"{INDEX_DIR}/train.offsets",
            "made of other offsets files than the manifest lists (its offsets_digest differs): "
            "a shard's offsets changed after prepare",
        )
    ]


def test_an_index_that_differs_from_the_files_it_repeats_is_reported(ds):
    """Written wrong (its entry made for its bytes): opening cannot see it, verify does."""
    manifest = _manifest(ds)
    entry = manifest[INDEX]["train"]
    path = ds / entry["path"]
    offsets = np.fromfile(path, "<i8")
    offsets[3] += 1
    offsets.tofile(path)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_sealed(ds, manifest)
    first = manifest["splits"]["train"]["shards"][0]["offsets"]["path"]
    assert verify(ds) == [
        (f"{INDEX_DIR}/train.offsets[0]", f"differs from {first}, which the index should repeat")
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda o: np.where(np.arange(len(o)) == len(o) - 1, o + 5, o), "the last offset is"),
        (lambda o: np.where(np.arange(len(o)) == 3, o[5], o), "offsets go back from"),
        (lambda o: np.where(np.arange(len(o)) == 0, 1, o), "the first offset is 1, not 0"),
    ],
)
def test_offsets_written_wrong_are_refused_from_the_index_as_from_the_shard(ds, change, problem):
    """A writer that got a shard's offsets wrong writes them into the index too: opening
    refuses them from the index with the reader's message, naming the shard's file."""
    manifest = _manifest(ds)
    entry = manifest["splits"]["train"]["shards"][2]["offsets"]
    path = ds / entry["path"]
    change(np.fromfile(path, "<i8")).astype("<i8").tofile(path)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = write_manifest(ds, with_index(ds, manifest))
    assert manifest[INDEX]["train"]["offsets_digest"] == offsets_digest(
        manifest["splits"]["train"]["shards"]
    )
    with pytest.raises(DatasetError) as refused:
        gristmill.open_dataset(ds, **OPEN)
    message = str(refused.value)
    assert message.startswith(f"{entry['path']}: {problem}")
    assert message.endswith(f"; run `gristmill verify {ds.resolve()}`")


def test_no_index_is_made_of_offsets_files_that_are_not_as_listed(ds, caplog):
    manifest = read_manifest(ds)
    shard = manifest["splits"]["val"]["shards"][0]
    _damage(ds / shard["offsets"]["path"], _flip)
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        made = with_index(ds, manifest)
    assert sorted(made[INDEX]) == ["train"]
    assert f"no offsets index written: {shard['offsets']['path']} is not as listed" in caplog.text


def test_a_file_in_the_index_folder_that_the_manifest_does_not_list(ds):
    (ds / INDEX_DIR / "test.offsets").write_bytes(b"\0" * 8)
    [(where, message)] = verify(ds)
    assert where == f"{INDEX_DIR}/test.offsets" and "not listed" in message


@pytest.mark.parametrize(
    ("edit", "key", "first"),
    [
        (lambda m: m.__setitem__(INDEX, []), INDEX, INDEX),
        (lambda m: m[INDEX].__setitem__("test", m[INDEX]["train"]), f"{INDEX}.test", None),
        (
            lambda m: m[INDEX]["train"].__setitem__("offsets_digest", "x"),
            f"{INDEX}.train.offsets_digest",
            None,
        ),
        (lambda m: m[INDEX]["train"].__setitem__("sha256", None), f"{INDEX}.train.sha256", None),
        (lambda m: m[INDEX]["train"].__setitem__("bytes", 8), f"{INDEX}.train.bytes", None),
        (lambda m: m["splits"].__setitem__("val", []), f"{INDEX}.val", "splits.val"),
    ],
)
def test_a_malformed_index_entry_is_refused_at_open_and_reported(ds, edit, key, first):
    manifest = _manifest(ds)
    edit(manifest)
    write_sealed(ds, manifest)
    with pytest.raises(DatasetError, match="the manifest was edited or damaged") as refused:
        gristmill.open_dataset(ds, **OPEN)
    assert f"{MANIFEST}: {first or key}" in str(refused.value)  # the first problem found
    assert any(key in where for where, _ in verify(ds))


def test_an_index_whose_splits_have_no_shards_is_not_written(tmp_path):
    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(5)))
    gristmill.prepare(source, tmp_path / "ds", val_fraction=0.01, progress=False)
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["splits"]["val"]["shards"] == []
    made = with_index(tmp_path / "ds", manifest)
    assert sorted(made[INDEX]) == ["train"]
    assert not list(manifest_problems(made))


def test_a_manifest_that_disagrees_with_itself_keeps_its_index_as_it_is(ds):
    manifest = read_manifest(ds)
    manifest["splits"]["train"]["num_documents"] += 1
    assert with_index(ds, manifest) is manifest
    manifest["splits"]["train"]["num_documents"] -= 1
    manifest[INDEX]["train"]["bytes"] = 8  # only the index disagrees: it is made anew
    assert with_index(ds, manifest)[INDEX] == read_manifest(ds)[INDEX]


def test_prepare_writes_the_index_of_every_split_with_shards(pristine):
    manifest = _manifest(pristine)
    assert sorted(manifest[INDEX]) == ["train", "val"]
    assert sorted(p.name for p in (pristine / INDEX_DIR).iterdir()) == [
        "train.loss",
        "train.offsets",
        "val.loss",
        "val.offsets",
    ]
    assert verify(pristine) == []
