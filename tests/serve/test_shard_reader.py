"""The ``memmap-shards`` reader: how many shards stay mapped, reads from several threads, and a
shard file checked at its first read."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

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
