"""The mirror: one download per file per node, however many processes share it, and a size
limit kept by dropping the file needed furthest in the future (least recently used without an
oracle)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gristmill
from gristmill.plugin.remote import LeastRecentlyUsed, NextUse, open_mirror
from gristmill.plugin.remote import mirror as remote_mirror
from gristmill.store.manifest import listed_files

READER = """
import sys, gristmill, numpy as np
ds = gristmill.open_dataset(sys.argv[1], seq_len=96, packer="first-fit")
print(int(sum(s["input_ids"].sum() for s in ds.batch(np.arange(len(ds))))))
"""


def test_processes_sharing_the_cache_download_each_file_once(http_server, dataset):
    url = http_server.publish(dataset)
    runs = [
        subprocess.Popen([sys.executable, "-c", READER, url], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    totals = [run.communicate(timeout=300)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    local = gristmill.open_dataset(dataset, seq_len=96, packer="first-fit")
    expected = str(int(sum(s["input_ids"].sum() for s in local.batch(np.arange(len(local))))))
    assert totals == [expected] * 3
    gets = http_server.requests.by_path("GET")
    name = url.rsplit("/", 1)[1]
    assert gets[f"/{name}/manifest.json"] == 3  # once per open
    files = {path: count for path, count in gets.items() if not path.endswith("manifest.json")}
    listed = {f"/{name}/{entry['path']}" for entry in listed_files(local.manifest)}
    assert files == dict.fromkeys(listed, 1)  # every file read, each downloaded once


def test_the_least_recently_used_file_goes_without_an_oracle():
    policy = LeastRecentlyUsed()
    assert policy.victim(["a", "b", "c"], {"a": 3.0, "b": 1.0, "c": 2.0}) == "b"
    assert policy.victim(["a", "b"], {"a": 3.0}) == "b"  # never used here: the oldest


def test_belady_drops_the_file_needed_furthest_never_again_first():
    later = {"a": 10, "b": 2, "c": 7, "d": None}
    policy = NextUse(later.get)
    assert policy.victim(["a", "b", "c", "d"], {}) == "d"
    assert policy.victim(["a", "b", "c"], {}) == "a"
    assert policy.victim(["b", "c"], {}) == "c"
    tie = NextUse(lambda name: 5)
    assert tie.victim(["a", "b"], {"a": 2.0, "b": 1.0}) == "b"  # then least recently used


@pytest.fixture
def even(prepared_dataset):
    """Documents of one length, so that every shard but the last has the same size."""
    records = [{"text": "x" * 50 + f"{i:04d}"} for i in range(400)]
    return prepared_dataset(records, tokens_per_shard=2000)


def held(mirror, entries):
    return [(mirror.root / e["path"]).exists() for e in entries]


def test_a_full_mirror_drops_the_file_needed_furthest(http_server, even):
    url = http_server.publish(even)
    shards = gristmill.open_dataset(even).manifest["splits"]["train"]["shards"]
    tokens = [shard["tokens"] for shard in shards[:4]]
    assert len({e["bytes"] for e in tokens}) == 1
    pinned = mirrored(open_mirror(url).root)  # what an open fetches, no shard
    mirror = open_mirror(url, cache_limit=pinned + 3 * tokens[0]["bytes"])
    for entry in tokens[:3]:
        mirror.fetch(entry)
    later = {tokens[0]["path"]: 10, tokens[1]["path"]: None, tokens[2]["path"]: 5}
    mirror.policy = NextUse(later.get)
    mirror.fetch(tokens[3])
    assert held(mirror, tokens) == [True, False, True, True]
    later.clear()  # the schedule moved on
    later.update({tokens[0]["path"]: 1, tokens[2]["path"]: 50, tokens[3]["path"]: 3})
    mirror.fetch(tokens[1])
    assert held(mirror, tokens) == [True, True, False, True]
    assert (mirror.root / "index" / "train.offsets").exists()  # never dropped


def test_without_an_oracle_the_least_recently_used_file_goes(http_server, even):
    url = http_server.publish(even)
    shards = gristmill.open_dataset(even).manifest["splits"]["train"]["shards"]
    tokens = [shard["tokens"] for shard in shards[:4]]
    pinned = mirrored(open_mirror(url).root)
    mirror = open_mirror(url, cache_limit=pinned + 3 * tokens[0]["bytes"])
    for entry in tokens[:3]:
        mirror.fetch(entry)
    mirror.used(tokens[0]["path"])
    mirror.fetch(tokens[3])
    assert held(mirror, tokens) == [True, False, True, True]


def test_the_mirror_stays_within_its_limit_and_serves_the_same_samples(http_server, plain):
    """Blocks of packed samples, in order then reversed, from a cache of three shards: the
    mirror's files (mapped ones included, which it may not drop) stay within the limit; a
    block that reads more shards than the limit holds fetches again what it dropped."""
    url = http_server.publish(plain)
    local = gristmill.open_dataset(plain, seq_len=96, packer="first-fit")
    shards = local.manifest["splits"]["train"]["shards"]
    biggest = max(s["tokens"]["bytes"] + s["offsets"]["bytes"] for s in shards)
    first = gristmill.open_dataset(url, seq_len=96, packer="first-fit")
    limit = mirrored(first.path) + 3 * biggest
    for order in (np.arange(len(local)), np.arange(len(local))[::-1]):
        # A dataset opened anew maps nothing: what the mirror dropped is fetched again.
        remote = gristmill.open_dataset(url, seq_len=96, packer="first-fit", cache_limit=limit)
        for lo in range(0, len(order), 16):
            block = order[lo : lo + 16]
            for got, expected in zip(remote.batch(block), local.batch(block)):
                assert all(np.array_equal(got[k], expected[k]) for k in expected)
            assert mirrored(remote.path) <= limit
    gets = http_server.requests.by_path("GET")
    assert max(gets[p] for p in gets if p.endswith(".tokens")) >= 2  # dropped, fetched again
    assert len(shards) > 3 + 1


def mirrored(root) -> int:
    """Bytes of the dataset's files in its mirror at ``root``."""
    return sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".gristmill-")
    )


def test_the_limit_comes_from_the_environment(http_server, plain, monkeypatch):
    monkeypatch.setenv("GRISTMILL_REMOTE_CACHE_LIMIT", "123456")
    ds = gristmill.open_dataset(http_server.publish(plain), seq_len=96)
    assert ds.mirror.cache_limit == 123456
    monkeypatch.setenv("GRISTMILL_REMOTE_CACHE_LIMIT", "lots")
    with pytest.raises(gristmill.DatasetError, match="GRISTMILL_REMOTE_CACHE_LIMIT='lots'"):
        gristmill.open_dataset(http_server.publish(plain), seq_len=96)


REMAPPING = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (160, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
import gristmill
url, local, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
remote = gristmill.open_dataset(url, seq_len=96, cache_limit=limit)
here = gristmill.open_dataset(local, seq_len=96)
assert remote.documents._max_mapped == 20  # so that shards are unmapped, then mapped again
for _ in range(2):
    for lo in range(0, len(here), 8):
        block = np.arange(lo, min(lo + 8, len(here)))
        for got, expected in zip(remote.batch(block), here.batch(block)):
            assert all(np.array_equal(got[k], expected[k]) for k in expected)
print("same")
"""


def test_a_reader_fetches_again_what_the_mirror_dropped_after_it_was_checked(
    http_server, prepared_dataset
):
    """More shards than a reader keeps mapped, and room for a few: a shard mapped again after
    its files were dropped is fetched again, and serves the same samples."""
    local = prepared_dataset(
        [{"text": f"doc {i} " * (i % 23 + 1)} for i in range(500)], tokens_per_shard=800
    )
    shards = gristmill.open_dataset(local).manifest["splits"]["train"]["shards"]
    assert len(shards) > 2 * 20
    url = http_server.publish(local)
    biggest = max(s["tokens"]["bytes"] + s["offsets"]["bytes"] for s in shards)
    limit = mirrored(open_mirror(url).root) + 4 * biggest
    run = subprocess.run(
        [sys.executable, "-c", REMAPPING, url, str(local), str(limit)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "same"
    gets = http_server.requests.by_path("GET")
    assert all(gets[p] == 2 for p in gets if p.endswith(".tokens"))  # one per pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_process_forked_while_a_file_is_dropped_does_not_keep_it_from_being_dropped(
    http_server, even
):
    """A DataLoader worker forked while another thread drops a file (holding its pin file's
    exclusive lock) closes its copy of that lock at once: kept, every reader of the file
    would wait for the worker's exit."""
    mirror = open_mirror(http_server.publish(even))
    name = gristmill.open_dataset(even).manifest["splits"]["train"]["shards"][0]["tokens"]["path"]
    claim = mirror._claim(name)
    assert claim is not None
    child = os.fork()
    if child == 0:  # the worker: lives on while the parent drops the file and pins it again
        time.sleep(30)
        os._exit(0)
    try:
        remote_mirror._held_close(claim)
        deadline = time.monotonic() + 10  # the child closes its copy as it starts
        while (again := mirror._claim(name)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again is not None  # no copy of the first lock left in the child
        remote_mirror._held_close(again)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
