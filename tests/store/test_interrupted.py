"""An interrupted prepare or convert never leaves output that passes as complete, and running
the same command again ends byte-identical to an uninterrupted run, with nothing stray left and
no process of the killed run still running."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gristmill
from gristmill.errors import DataError, DatasetError
from gristmill.layout import INCOMPLETE, MANIFEST
from tests.helpers import alive, children, fuzz_examples, kill_when, run_gristmill, tree_bytes


def test_a_bad_record_midway_leaves_an_incomplete_dataset(tmp_path, write_jsonl):
    good = [{"text": f"record {i}"} for i in range(2000)]
    src = write_jsonl([*good, "{not json", *good])
    out = tmp_path / "ds"
    with pytest.raises(DataError, match=r"data.jsonl:2001: malformed JSON"):
        gristmill.prepare(src, out, tokens_per_shard=1000, progress=False)
    assert (out / INCOMPLETE).exists() and not (out / MANIFEST).exists()
    assert list((out / "train").glob("*.tokens"))  # shards were written before the failure
    with pytest.raises(DatasetError, match=r"incomplete .*run the same `gristmill prepare`"):
        gristmill.open_dataset(out)
    result = run_gristmill("inspect", str(out))
    assert result.returncode == 2 and "incomplete" in result.stderr


# kill -9 at random moments: a few in the default run, many in `tox -e fuzz`.
RANDOM_KILLS = max(2, fuzz_examples() // 50)
DURABLE = {"GRISTMILL_FSYNC": "1"}  # the real thing, whatever the suite uses
OUTPUT = {"prepare": "ds", "convert": "out.jsonl"}


def _arguments(command: str, source: Path, out: Path) -> list[str]:
    args = [command, str(source), "-o", str(out), "--on-error", "skip"]
    if command == "prepare":
        args += ["--workers", "2", "--task-bytes", "300000", "--tokens-per-shard", "100000"]
        args += ["--val-fraction", "0.1", "--dedup", "--no-progress"]
    return args


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 4 MB of JSONL: many tasks, duplicates, and a bad line for the reject file."""
    rng = random.Random(7)
    words = ["mill", "grist", "stone", "wheel", "flour", "grain", "water", "sack"]
    lines = [
        json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))})
        for _ in range(6000)
    ]
    lines[3000:3000] = ["{not json", *lines[:500]]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory) -> dict[str, tuple[float, dict[str, bytes]]]:
    """Per command: how long an uninterrupted run took, and every file it left."""
    runs = {}
    for command, name in OUTPUT.items():
        root = tmp_path_factory.mktemp(f"clean-{command}")
        started = time.monotonic()
        result = run_gristmill(*_arguments(command, corpus, root / name), env=DURABLE)
        assert result.returncode == 0, result.stderr
        runs[command] = (time.monotonic() - started, tree_bytes(root))
    return runs


def _descendants(pid: int) -> set[int]:
    found, parents = set(), [pid]
    while parents:
        kids = children(parents.pop())
        found.update(kids)
        parents += kids
    return found


def _kill_9(args: list[str], when) -> set[int]:
    """Run gristmill, SIGKILL its main process (only) once ``when()``; return its descendants
    (workers) as they were at that moment."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gristmill.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **DURABLE},
    )
    descendants: set[int] = set()

    def ready() -> bool:
        if when():
            descendants.update(_descendants(proc.pid))
            return True
        return False

    kill_when(proc, ready)
    return descendants


def _first_write(command: str, root: Path):
    """The moment the first output file has bytes in it."""
    pattern = "ds/train/*.tokens" if command == "prepare" else "out.jsonl.tmp-*"
    return lambda: any(path.stat().st_size for path in root.glob(pattern))


@pytest.mark.parametrize("command", list(OUTPUT))
@pytest.mark.parametrize("moment", ["first-write", *(f"random-{i}" for i in range(RANDOM_KILLS))])
def test_kill_9_then_rerun_gives_the_uninterrupted_result(corpus, clean, tmp_path, command, moment):
    duration, expected = clean[command]
    out = tmp_path / OUTPUT[command]
    args = _arguments(command, corpus, out)
    if moment == "first-write":
        when = _first_write(command, tmp_path)
    else:
        at = time.monotonic() + random.Random(moment).uniform(0, duration)
        when = lambda: time.monotonic() >= at  # noqa: E731
    workers = _kill_9(args, when)

    # Nothing of the killed run goes on (a worker still starting exits once it has started).
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in workers if alive(pid)] == []
    # Nothing looks finished unless it is: an unfinished dataset is refused, an output file is
    # there only when complete (with its reject file: a finished convert is not run again).
    if command == "prepare" and (out / INCOMPLETE).exists():
        with pytest.raises(DatasetError, match="incomplete"):
            gristmill.open_dataset(out)
    if command == "prepare" or not out.exists():
        result = run_gristmill(*args, env=DURABLE)
        assert result.returncode == 0, result.stderr
    assert tree_bytes(tmp_path) == expected  # every byte, and no stray file beside it
