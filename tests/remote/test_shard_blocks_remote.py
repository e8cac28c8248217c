"""The torch loader with the shard-blocks sampler over a remote dataset: the local batches for
every rank, worker and resume case; and over three epochs with a cache of a quarter of the
shards, about one download of each shard an epoch, where the default sampler (a full shuffle
every epoch) downloads most of the dataset again for every few steps."""

from __future__ import annotations

import pytest

import gristmill
import gristmill_memmap_shards.reader as memmap_reader
from gristmill.plugin.remote.prefetch import downloads
from gristmill.store.manifest import listed_files

torch = pytest.importorskip("torch")
from tests.remote.test_prefetch import (  # noqa: E402
    OPEN,
    file_reads,
    loaders,
    many,  # noqa: F401 (a fixture)
    resumed,
    shard_gets,
    shards_of,
)
from tests.torch.test_loader import _run  # noqa: E402

WINDOW = 2  # shards read at once: a quarter of the test's shards holds them and a chunk's reads


def sampler(partitions: int = 1) -> dict:
    return {
        "sampler": "shard-blocks",
        "sampler_options": {"window": WINDOW, "partitions": partitions},
    }


def limits(url: str, path, share: float, **options) -> tuple[dict[str, int], int, int]:
    """The bytes of each shard file of the dataset at ``path``, ``share`` of their sum, and a
    ``cache_limit`` for the copy at ``url`` that leaves that much room for them beside the
    files a mirror never drops."""
    sizes = {s[k]["path"]: s[k]["bytes"] for s in shards_of(path) for k in ("tokens", "offsets")}
    opened = gristmill.open_dataset(url, **OPEN, **options)
    held = sum(e["bytes"] for e in listed_files(opened.manifest) if e["path"] not in sizes)
    held += (opened.path / "manifest.json").stat().st_size
    room = int(share * sum(sizes.values()))
    return sizes, room, held + room


@pytest.mark.parametrize(
    ("world", "workers", "cut", "partitions", "share"),
    [(1, 0, 0, 1, None), (2, 2, 3, 2, None), (4, 1, 5, 2, None), (2, 0, 4, 2, 0.25)],
)
def test_the_loader_over_s3_serves_the_local_batches(
    s3_server,
    many,  # noqa: F811
    world,
    workers,
    cut,
    partitions,
    share,
):
    """Every rank's batches of two epochs, the first stopped after ``cut`` steps and resumed
    on another number of workers; with no cache limit, or ``share`` of the shards."""
    here = loaders(many, world, **sampler(partitions))
    expected = _run(here) + _run(here)  # epochs 0 and 1
    url = s3_server.upload(many)
    room = None
    if share is not None:
        room = limits(url, many, share, storage_options=s3_server.options)[2]
    remote = {"storage_options": s3_server.options, "cache_limit": room}
    first = loaders(url, world, num_workers=workers, open=remote, **sampler(partitions))
    before = _run(first, cut)
    second = resumed(
        url,
        world,
        first[0].state_dict(),
        num_workers=1 - min(workers, 1),
        open=remote,
        **sampler(partitions),
    )
    assert before + _run(second) + _run(second) == expected


def test_a_quarter_cache_downloads_each_shard_about_once_an_epoch(http_server, many, monkeypatch):  # noqa: F811
    """Three epochs, a cache of a quarter of the shards, a reader that keeps one shard mapped
    (so that it asks the mirror again for every shard it reads again): with shard-blocks the
    loader downloads at most 1.2 times the shard files an epoch, and so would least recently
    used; with the default sampler it downloads several times more."""
    monkeypatch.setattr(memmap_reader, "mapped_limit", lambda: 1)
    got = {}
    for name, options in (("shard-blocks", sampler()), ("distributed", {})):
        url = http_server.publish(many)
        sizes, room, limit = limits(url, many, 0.25)
        (loader,) = loaders(url, 1, open={"cache_limit": limit, "prefetch": 0}, **options)
        reads = file_reads(loader, 3)
        http_server.requests.clear()
        for _ in range(3):
            _run([loader])
        real = shard_gets(http_server, url)
        lru = len(downloads(reads, sizes, room, belady=False))
        got[name] = real, lru
        # Belady's rule is the minimum; the real mirror keeps the shard the reader has mapped
        # (pinned), which the rule might have dropped, so it may take a few downloads more.
        assert len(sizes) <= real <= 1.05 * len(downloads(reads, sizes, room))
    for downloaded in got["shard-blocks"]:
        assert downloaded <= 1.2 * 3 * len(sizes)
    assert got["distributed"][0] > 3 * got["shard-blocks"][0]
    assert got["distributed"][1] > 3 * got["shard-blocks"][1]


def test_an_order_too_spread_for_the_cache_is_said_once(http_server, many, caplog):  # noqa: F811
    """With a quarter-size cache the default sampler keeps every shard in use all epoch: the
    loader warns once, naming the sampler and what to do; shard-blocks keeps few shards in use
    and gets no warning."""
    warned = {}
    for name, options in (("distributed", {}), ("shard-blocks", sampler())):
        url = http_server.publish(many)
        _, _, limit = limits(url, many, 0.25)
        (loader,) = loaders(url, 1, open={"cache_limit": limit, "prefetch": 0}, **options)
        caplog.clear()
        for _ in range(2):
            _run([loader])
        warned[name] = [r.getMessage() for r in caplog.records if "in use at once" in r.message]
    assert len(warned["distributed"]) == 1
    assert "'distributed' sampler" in warned["distributed"][0]
    assert "sampler='shard-blocks'" in warned["distributed"][0]
    assert warned["shard-blocks"] == []
