"""The torch loader over a remote dataset: the local batches for every rank, worker and resume
case; the shards fetched ahead of the reads in the schedule's order; Belady's rule from the
schedule, which downloads no more than the fewest a simulation of the reads allows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import gristmill
import gristmill_memmap_shards.reader as memmap_reader
from gristmill.errors import DatasetError
from gristmill.plugin.remote.prefetch import downloads
from gristmill.store.manifest import listed_files
from tests.remote.test_remote_cache import mirrored

torch = pytest.importorskip("torch")
import gristmill.torch  # noqa: E402
from gristmill.torch.loader import READ_AHEAD  # noqa: E402
from tests.torch.test_loader import _keys, _run  # noqa: E402

OPEN = {"seq_len": 96, "packer": "first-fit"}


@pytest.fixture
def many(prepared_dataset):
    """Documents of one length in many shards of one size (no loss masks: opening a copy
    fetches no shard)."""
    records = [{"text": "x" * 50 + f"{i:04d}"} for i in range(400)]
    return prepared_dataset(records, tokens_per_shard=1000)


def loaders(path, world, batch=4, **options):
    dataset = options.pop("open", {})
    return [
        gristmill.torch.dataloader(
            gristmill.open_dataset(path, **OPEN, **dataset),
            batch_size=batch,
            rank=rank,
            world_size=world,
            collate_fn=_keys,
            **options,
        )
        for rank in range(world)
    ]


def resumed(path, world, state, **options):
    ranks = loaders(path, world, **options)
    for loader in ranks:
        loader.load_state_dict(state)
    return ranks


@pytest.mark.parametrize(
    ("world", "workers", "cut", "limit"),
    [
        (1, 0, 0, None),
        (2, 0, 5, None),
        (2, 2, 3, None),
        (3, 1, 4, None),
        (1, 2, 3, 0.25),
        (2, 0, 5, 0.25),
    ],
)
def test_the_loader_over_s3_serves_the_local_batches(s3_server, many, world, workers, cut, limit):
    """Every rank's batches of two epochs, the first stopped after ``cut`` steps and resumed
    on another number of workers, with no limit or a cache of ``limit`` of the shards' bytes,
    and shards fetched ahead (the default): no read fails because a file was dropped between
    its landing and its read."""
    here = loaders(many, world)
    expected = _run(here) + _run(here)  # epochs 0 and 1
    url = s3_server.upload(many)
    room = None
    if limit is not None:
        opened = gristmill.open_dataset(url, **OPEN, storage_options=s3_server.options)
        room = mirrored(opened.path) + int(limit * shard_bytes(many))
    remote = {"open": {"storage_options": s3_server.options, "cache_limit": room}}
    first = loaders(url, world, num_workers=workers, **remote)
    before = _run(first, cut)
    second = resumed(url, world, first[0].state_dict(), num_workers=1 - min(workers, 1), **remote)
    assert before + _run(second) + _run(second) == expected


def shard_bytes(path) -> int:
    shards = gristmill.open_dataset(path).manifest["splits"]["train"]["shards"]
    return sum(s["tokens"]["bytes"] + s["offsets"]["bytes"] for s in shards)


def tokens_read(served, url) -> list[str]:
    """The shard token files the server sent, in the order it was asked for them."""
    name = url.rsplit("/", 1)[1]
    return [
        path.split("?")[0][len(name) + 2 :]
        for method, path in list(served.requests.seen)
        if method == "GET" and path.startswith(f"/{name}/") and ".tokens" in path
    ]


def in_order(loader) -> list[str]:
    """The token files of the loader's timeline, in its order, each once."""
    timeline = loader.timeline()
    names = [timeline.files(read)[0]["path"] for read in timeline.runs.tolist()]
    return list(dict.fromkeys(names))


def test_prefetch_fetches_the_shards_in_the_schedules_order(http_server, many):
    url = http_server.publish(many)
    (loader,) = loaders(url, 1, open={"prefetch": 1})
    expected = in_order(loader)
    pass_ = _run([loader])
    assert len(pass_) == len(loader)
    assert tokens_read(http_server, url) == expected[: len(set(tokens_read(http_server, url)))]
    assert len(tokens_read(http_server, url)) == len(shards_of(many))  # each once, every one


def test_prefetch_runs_ahead_of_the_reads_and_no_further(http_server, many):
    url = http_server.publish(many)
    (loader,) = loaders(url, 1, open={"prefetch": 3})
    timeline = loader.timeline()
    it = iter(loader)
    next(it)  # step 0 read; the shards of step 1 on are fetched ahead
    runs = timeline.runs[: timeline.first_run(1) + 3].tolist()
    wanted = {timeline.files(read)[0]["path"] for read in runs}
    deadline = time.monotonic() + 30
    while set(tokens_read(http_server, url)) != wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # time enough for a fetch past the window, were there one
    assert set(tokens_read(http_server, url)) == wanted
    assert len(wanted) < len(shards_of(many))
    it.close()  # the prefetch threads stop with the pass
    assert loader.prefetcher is None


def test_no_prefetch_fetches_at_the_reads_alone(http_server, many):
    url = http_server.publish(many)
    (loader,) = loaders(url, 1, open={"prefetch": 0})
    timeline = loader.timeline()
    it = iter(loader)
    next(it)  # the first chunk: step 0 alone
    time.sleep(0.3)
    assert loader.prefetcher is None
    first = {timeline.files(r)[0]["path"] for r in timeline.runs[: timeline.first_run(1)]}
    assert set(tokens_read(http_server, url)) == first
    it.close()


def test_a_failed_prefetch_is_raised_by_the_read_that_needs_the_file(http_server, many):
    url = http_server.publish(many)
    (loader,) = loaders(url, 1, open={"prefetch": 4})
    timeline = loader.timeline()
    later = timeline.files(int(timeline.runs[timeline.first_run(2)]))[0]["path"]
    http_server.faults[f"/{url.rsplit('/', 1)[1]}/{later}"] = "403"
    with pytest.raises(DatasetError, match="access denied") as raised:
        _run([loader])
    assert later in str(raised.value)
    assert 1 <= loader.step < len(loader)  # the batches before its chunk were served


def shards_of(path):
    return gristmill.open_dataset(path).manifest["splits"]["train"]["shards"]


def file_reads(loader, epochs: int) -> list[str]:
    """The shard files a reader that keeps one shard mapped asks its mirror for, in order,
    over ``epochs`` passes of ``loader`` (one rank): its chunks' shards, each once a chunk,
    the one still mapped from the chunk before not again."""
    dataset, names, live = loader.source, [], None
    for epoch in range(epochs):
        schedule = loader._schedule_of(epoch)
        starts = [0, *range(1, schedule.steps, READ_AHEAD)]
        for lo, hi in zip(starts, [*starts[1:], schedule.steps]):
            shards = dataset.shard_reads(schedule.shares(range(lo, hi), loader.rank)[0])[0]
            for shard in dict.fromkeys(shards.tolist()):
                if shard != live:
                    names += [entry["path"] for entry in dataset.shard_files(shard)]
                live = shard
    return names


def shard_gets(served, url) -> int:
    name = url.rsplit("/", 1)[1]
    gets = served.requests.by_path("GET")
    return sum(n for p, n in gets.items() if p.startswith(f"/{name}/train/"))


def test_belady_from_the_schedule_downloads_the_fewest_over_three_epochs(
    http_server, many, monkeypatch
):
    """A cache of a quarter of the shards, a reader that keeps one shard mapped (so that it
    asks the mirror again for every shard it reads again): the loader's oracle downloads what
    a simulation of Belady's rule over the same reads does, and no more than least recently
    used, which re-downloads most of the data every epoch."""
    monkeypatch.setattr(memmap_reader, "mapped_limit", lambda: 1)
    belady_url, lru_url = http_server.publish(many), http_server.publish(many)
    shards = shards_of(many)
    sizes = {s[k]["path"]: s[k]["bytes"] for s in shards for k in ("tokens", "offsets")}
    room = sum(sizes.values()) // 4
    opened = gristmill.open_dataset(belady_url, **OPEN)
    held = sum(
        entry["bytes"] for entry in listed_files(opened.manifest) if entry["path"] not in sizes
    )
    held += (opened.path / "manifest.json").stat().st_size
    limit = {"cache_limit": held + room, "prefetch": 0}
    (loader,) = loaders(belady_url, 1, open=limit)
    reads = file_reads(loader, 3)
    http_server.requests.clear()
    for _ in range(3):
        _run([loader])
    fewest = downloads(reads, sizes, room)
    lru = downloads(reads, sizes, room, belady=False)
    belady = shard_gets(http_server, belady_url)
    assert len(sizes) <= belady <= len(fewest)
    # Least recently used, for real: the same reads, in the same blocks, without an oracle.
    plain = gristmill.open_dataset(lru_url, **OPEN, cache_limit=held + room)
    for epoch in range(3):
        schedule = loader._schedule_of(epoch)
        starts = [0, *range(1, schedule.steps, READ_AHEAD)]
        for lo, hi in zip(starts, [*starts[1:], schedule.steps]):
            plain.batch(schedule.shares(range(lo, hi), 0)[0])
    assert belady < shard_gets(http_server, lru_url) <= len(lru)


def on_disk(root, sizes) -> int:
    """Bytes the mirror's dataset files at ``root`` hold on disk: those in its folder, and
    those dropped from it that this process still has mapped (``sizes``: bytes by path)."""
    held = mirrored(root)
    prefix = f"{root}/"
    dropped = set()
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(prefix):
                name = fields[5].rstrip("\n")
                if name.endswith(" (deleted)"):
                    dropped.add((fields[4], name[len(prefix) : -len(" (deleted)")]))
    return held + sum(sizes[name] for _, name in dropped)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_the_files_of_a_mirror_with_a_limit_stay_within_it_on_disk(http_server, many):
    """A loader's epoch with shards fetched ahead and a cache of a quarter of the shards: the
    files in the mirror and those dropped from it but still mapped by the reader hold no more
    than the limit, at every step."""
    shards = shards_of(many)
    sizes = {s[k]["path"]: s[k]["bytes"] for s in shards for k in ("tokens", "offsets")}
    url = http_server.publish(many)
    opened = gristmill.open_dataset(url, **OPEN)
    limit = mirrored(opened.path) + sum(sizes.values()) // 4
    (loader,) = loaders(url, 1, open={"cache_limit": limit})
    expected = _run(loaders(many, 1))
    served, most = [], 0
    for batch in loader:
        served.append([batch])
        most = max(most, on_disk(opened.path, sizes))
    assert served == expected
    assert 0 < most <= limit
