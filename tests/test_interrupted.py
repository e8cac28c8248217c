"""An interrupted prepare never leaves a dataset that passes as complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import gristmill
from gristmill.errors import DataError, DatasetError
from gristmill.manifest import INCOMPLETE, MANIFEST
from tests.helpers import run_gristmill, tree_bytes


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


def test_killing_prepare_then_rerunning_gives_the_uninterrupted_result(tmp_path):
    out, clean = tmp_path / "killed", tmp_path / "clean"
    args = ["sample:stdlib", "--tokens-per-shard", "65536", "--no-progress"]
    durable = {**os.environ, "GRISTMILL_FSYNC": "1"}  # the real thing, whatever the suite uses
    proc = subprocess.Popen(
        [sys.executable, "-m", "gristmill.cli", "prepare", *args, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=durable,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("train/*.tokens")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / INCOMPLETE).exists() and not (out / MANIFEST).exists()
    with pytest.raises(DatasetError, match="incomplete"):
        gristmill.open_dataset(out)

    assert run_gristmill("prepare", *args, "-o", str(out), env=durable).returncode == 0
    assert run_gristmill("prepare", *args, "-o", str(clean), env=durable).returncode == 0

    assert tree_bytes(out) == tree_bytes(clean)
    assert len(gristmill.open_dataset(out)) > 500
