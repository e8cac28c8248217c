"""Real ranks: processes joined by torch.distributed (gloo), each with 2 DataLoader workers,
all-gather what they served, from a prepared dataset and from a stream; and the same runs
killed mid-epoch and resumed, also on another number of ranks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import zlib
from pathlib import Path

import numpy as np
import pytest

import gristmill

torch = pytest.importorskip("torch")

BATCH_PER_STEP = 12  # global batch: 2 ranks × 6 or 4 ranks × 3
STREAM = {"seq_len": 96, "chunk_bytes": 1000, "piece_bytes": 3000}  # about 20 pieces


def _identity(samples):
    """A batch as (a checksum of each sample's ids, is it a repeat): small, the same in every
    process (unlike hash(), which is salted per process)."""
    return [
        (zlib.crc32(s["input_ids"].astype(np.int64).tobytes()), bool(s.get("repeat", False)))
        for s in samples
    ]


def _step(gathered) -> list[tuple]:
    """Everything a step served, all ranks together."""
    return sorted(tuple(item) for share in gathered for item in share)


def _data(path: str):
    """The prepared dataset, or a stream of the file it was prepared from (or of a hub: spec)."""
    if path.endswith(".jsonl") or path.startswith("hub:"):
        return gristmill.stream(path, **STREAM)
    return gristmill.open_dataset(path, seq_len=96, packer="first-fit", seed=7)


def _rank(rank: int, world: int, path: str, out: str, stop_after: int | None, resume: str | None):
    import gristmill.torch

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=world
    )
    loader = gristmill.torch.dataloader(
        _data(path), batch_size=BATCH_PER_STEP // world, num_workers=2, collate_fn=_identity
    )
    assert (loader.rank, loader.world_size) == (rank, world)  # from the process group
    if resume:
        loader.load_state_dict(json.loads(Path(resume).read_text()))
    served = []
    for step, batch in enumerate(loader):
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, batch)
        served.append(gathered)
        if stop_after is not None and step + 1 == stop_after:
            states = [None] * world
            torch.distributed.all_gather_object(states, loader.state_dict())
            assert all(state == states[0] for state in states)  # any rank's state will do
            if rank == 0:
                Path(f"{out}.state").write_text(json.dumps(loader.state_dict()))
                Path(f"{out}.json").write_text(json.dumps(served))
            torch.distributed.barrier()
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: as a node going down
    if rank == 0:
        Path(f"{out}.json").write_text(json.dumps(served))
    torch.distributed.destroy_process_group()


def _launch(world, path, out, stop_after=None, resume=None) -> list[list[list]]:
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_rank, args=(r, world, str(path), str(out), stop_after, resume))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    expected = -signal.SIGKILL if stop_after is not None else 0
    assert [p.exitcode for p in procs] == [expected] * world
    return json.loads(Path(f"{out}.json").read_text())


@pytest.fixture(scope="module")
def prepared(prepared_dataset):
    """The dataset, beside the file it was prepared from (``ds.jsonl``: streamed too)."""
    rng = np.random.default_rng(0)
    records = [{"text": f"doc {i} " + "w" * int(rng.integers(1, 80))} for i in range(400)]
    return prepared_dataset({"ds": records})


def _everything(path) -> list[int]:
    ds = gristmill.open_dataset(path, seq_len=96, packer="first-fit", seed=7)
    return sorted(_identity([ds[i] for i in range(len(ds))]))


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_cover_the_epoch_in_equal_steps(prepared, tmp_path, world):
    served = _launch(world, prepared, tmp_path / "run")
    # all_gather_object only completes when every rank takes part: equal steps by construction,
    # and every rank's share of a step has the same size.
    assert all(len({len(share) for share in step}) == 1 for step in served)
    items = [item for step in served for item in _step(step)]
    real = sorted(i for i in items if not i[1])
    assert real == _everything(prepared)  # every sample exactly once
    assert sum(1 for i in items if i[1]) < world


def test_killed_ranks_resume_on_another_world_size(prepared, tmp_path):
    whole = _launch(4, prepared, tmp_path / "whole")
    before = _launch(4, prepared, tmp_path / "killed", stop_after=5)
    assert before == whole[:5]
    after = _launch(2, prepared, tmp_path / "resumed", resume=f"{tmp_path / 'killed'}.state")
    assert len(after) == len(whole) - 5
    # The same samples in every remaining global batch (repeats pad the last one to a multiple
    # of the world size: those may differ).
    for old, new in zip(whole[5:], after):
        assert [i for i in _step(old) if not i[1]] == [i for i in _step(new) if not i[1]]


def _stream_everything(path) -> list[tuple]:
    return sorted(_identity(list(_data(str(path.with_suffix(".jsonl"))))))


@pytest.mark.parametrize("world", [2, 4])
def test_stream_ranks_cover_the_epoch_in_equal_steps(prepared, tmp_path, world):
    source = prepared.with_suffix(".jsonl")
    served = _launch(world, source, tmp_path / "run")
    # Equal steps by construction (all_gather_object needs every rank), and a step's shares
    # are equal: a rank short of samples fills up with marked repeats.
    assert all(len({len(share) for share in step}) == 1 for step in served)
    items = [item for step in served for item in _step(step)]
    assert sorted(i for i in items if not i[1]) == _stream_everything(prepared)
    repeats = sum(1 for i in items if i[1])
    assert repeats < len(items) // 2  # the shares of about 20 pieces differ by a piece or so


def test_killed_stream_ranks_resume_exactly_and_on_another_world_size(prepared, tmp_path):
    source = prepared.with_suffix(".jsonl")
    whole = _launch(4, source, tmp_path / "whole")
    before = _launch(4, source, tmp_path / "killed", stop_after=3)
    assert before == whole[:3]
    state = f"{tmp_path / 'killed'}.state"
    after = _launch(4, source, tmp_path / "same", resume=state)
    assert before + after == whole  # the same ranks: the very same batches
    elastic = _launch(2, source, tmp_path / "elastic", resume=state)
    # Another number of ranks: the pieces left are dealt again; every remaining sample once.
    left = sorted(i for step in whole[3:] for i in _step(step) if not i[1])
    assert sorted(i for step in elastic for i in _step(step) if not i[1]) == left
    assert all(len({len(share) for share in step}) == 1 for step in elastic)
