"""Many processes opening one dataset at once: they all compute the pack plan together, and end
with one whole plan file and the same samples, whatever order their writes land in."""

from __future__ import annotations

import hashlib
import json
import multiprocessing

import numpy as np
import pytest

import gristmill

RANKS = 8


def _open(path: str, barrier, results) -> None:
    barrier.wait()  # every process asks for the plan at the same moment
    ds = gristmill.open_dataset(path, seq_len=256, packer="first-fit", seed=3)
    digest = hashlib.sha256()
    for array in vars(ds.plan).values():
        digest.update(np.asarray(array).tobytes())
    digest.update(ds[len(ds) - 1]["input_ids"].tobytes())
    results.put(digest.hexdigest())


@pytest.fixture
def prepared(tmp_path):
    src = tmp_path / "docs.jsonl"
    rng = np.random.default_rng(5)
    src.write_text(
        "".join(
            json.dumps({"text": f"{i} " + "x" * int(rng.integers(1, 400))}) + "\n"
            for i in range(20_000)
        )
    )
    gristmill.prepare(src, tmp_path / "ds", progress=False)
    return tmp_path / "ds"


def test_ranks_opening_at_once_share_one_whole_plan(prepared):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(RANKS), context.Queue()
    procs = [
        context.Process(target=_open, args=(str(prepared), barrier, results)) for _ in range(RANKS)
    ]
    for p in procs:
        p.start()
    digests = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * RANKS
    assert len(set(digests)) == 1  # the same plan and samples in every process
    plans = sorted(p.name for p in (prepared / ".gristmill-plans").iterdir())
    assert len(plans) == 1 and plans[0].endswith(".npz")  # one plan, no temporary file left over
    # The file is whole: a process opening the dataset later reads it and gets the same plan.
    assert _digest_after(prepared) == digests[0]


def _digest_after(path) -> str:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(1), context.Queue()
    proc = context.Process(target=_open, args=(str(path), barrier, results))
    proc.start()
    digest = results.get(timeout=60)
    proc.join(timeout=60)
    return digest
