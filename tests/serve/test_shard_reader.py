"""The ``memmap-shards`` reader: how many shards stay mapped, reads from several threads, and a
shard file checked at its first read."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError
from gristmill.layout import MANIFEST
from gristmill.store.manifest import read_manifest
from gristmill_memmap_shards import reader as shard_reader
from gristmill_memmap_shards.reader import MemmapShardReader

LIMIT = 16  # the fewest shards mapped_limit() keeps mapped


@pytest.fixture(scope="module")
def many_shards(prepared_dataset) -> Path:
    """Masked documents in far more shards than LIMIT."""
    qa = [
        {"prompt": f"q{i}? " + "p" * (i % 7), "completion": " a" * (i % 11 + 1)} for i in range(600)
    ]
    return prepared_dataset(qa, tokens_per_shard=200, val_fraction=0)


def _reader(path: Path) -> MemmapShardReader:
    manifest = read_manifest(path)
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 3 * LIMIT
    return MemmapShardReader(path, shards, dtype=np.dtype(manifest["dtype"]))


def _documents(reader: MemmapShardReader, order: list[int]) -> list[tuple[bytes, bytes]]:
    found = []
    for doc in order:
        tokens, mask = reader.document(doc)
        found.append((tokens.tobytes(), b"" if mask is None else mask.tobytes()))
    return found


def test_no_more_than_the_limit_of_shards_stay_mapped(many_shards, monkeypatch):
    expected = _documents(_reader(many_shards), list(range(_reader(many_shards).num_documents)))
    monkeypatch.setattr(shard_reader, "mapped_limit", lambda: LIMIT)
    reader = _reader(many_shards)
    rng = np.random.default_rng(0)
    order = rng.permutation(reader.num_documents).tolist() * 2
    for doc, got in zip(order, _documents(reader, order)):
        assert got == expected[doc]
    live = sum(shard is not None for shard in reader._live)
    assert live == LIMIT  # every shard was read, and only the limit stays mapped


def test_the_shard_read_again_stays_mapped(many_shards, monkeypatch):
    """The clock unmaps a shard not read since it last passed, never the one read all along."""
    monkeypatch.setattr(shard_reader, "mapped_limit", lambda: LIMIT)
    reader = _reader(many_shards)
    for k in range(len(reader._live)):
        reader.document(0)  # shard 0, between every other
        reader.document(reader._starts[k])
    assert reader._live[0] is not None


def test_threads_read_what_one_thread_reads(many_shards, monkeypatch):
    expected = _documents(_reader(many_shards), list(range(_reader(many_shards).num_documents)))
    monkeypatch.setattr(shard_reader, "mapped_limit", lambda: LIMIT)
    reader = _reader(many_shards)
    wrong: list[int] = []

    def read(seed: int) -> None:
        order = np.random.default_rng(seed).permutation(reader.num_documents).tolist()
        for doc, got in zip(order, _documents(reader, order)):
            if got != expected[doc]:
                wrong.append(doc)

    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
    assert sum(shard is not None for shard in reader._live) == LIMIT


def _open_copy(source: Path, tmp_path: Path) -> tuple[gristmill.Dataset, int, dict[str, Any]]:
    """A copy of the dataset, opened with its plan cached; a sample of its last shard, read
    by none before, and that shard's manifest entry."""
    path = tmp_path / "ds"
    shutil.copytree(source, path)
    gristmill.open_dataset(path, packer="none")  # reads the masks, and caches its plan
    ds = gristmill.open_dataset(path, packer="none")
    reader = ds.documents
    last = len(reader._files) - 1
    first = reader._starts[last]
    sample = next(i for i in range(len(ds)) if ds.documents_of(i)[0] == first)
    assert all(files is None for files in reader._files)  # opening checked no shard file
    return ds, sample, ds.manifest["splits"]["train"]["shards"][last]


@pytest.mark.parametrize("key", ["tokens", "offsets", "mask"])
def test_a_file_removed_after_open_is_refused_at_first_read(many_shards, tmp_path, key):
    ds, sample, shard = _open_copy(many_shards, tmp_path)
    (ds.path / shard[key]["path"]).unlink()
    with pytest.raises(DatasetError, match="shard file is missing"):
        ds[sample]
    assert ds[0]["input_ids"].size  # the other shards are still served


def test_a_file_cut_short_after_open_is_refused_at_first_read(many_shards, tmp_path):
    ds, sample, shard = _open_copy(many_shards, tmp_path)
    path = ds.path / shard["tokens"]["path"]
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DatasetError, match="manifest expects"):
        ds[sample]


def test_a_link_out_of_the_dataset_made_after_open_is_refused(many_shards, tmp_path):
    ds, sample, shard = _open_copy(many_shards, tmp_path)
    path = ds.path / shard["tokens"]["path"]
    outside = tmp_path / "outside.tokens"
    path.rename(outside)
    path.symlink_to(outside)
    with pytest.raises(DatasetError, match="leaves the dataset"):
        ds[sample]


def test_a_dataset_prepared_again_after_open_is_refused_at_first_read(many_shards, tmp_path):
    """The same shard files, but a manifest written since: another generation's, perhaps."""
    ds, sample, _ = _open_copy(many_shards, tmp_path)
    manifest = ds.path / MANIFEST
    manifest.rename(tmp_path / "old.json")
    shutil.copyfile(tmp_path / "old.json", manifest)
    with pytest.raises(DatasetError, match="the dataset changed since it was opened"):
        ds[sample]
