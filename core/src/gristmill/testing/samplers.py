"""Samplers: every epoch's order a permutation of the samples; the same order from every copy
made with the same seed (each rank makes its own, and so does a resumed run), which gives every
rank an equal share of each step, every sample once per epoch, and an exact resume, also on
another number of ranks."""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill.plugin.components import SamplerType
from gristmill.serve.schedule import Schedule
from gristmill.testing.kit import Check, Context

SIZES = (0, 1, 2, 17, 100)
EPOCHS = (0, 1, 5)


def checks(record: SamplerType) -> dict[str, Check]:
    return {"order": check_order, "ranks": check_ranks, "resume": check_resume}


def _sampler(record: SamplerType, n: int, *, seed: int = 3, global_batch: int = 4) -> Any:
    lengths = np.random.default_rng(n).integers(1, 512, n).astype(np.int64)
    shards = np.arange(n, dtype=np.int64) // 5  # samples in index order fill shards of 5
    return record.factory(n, seed=seed, lengths=lengths, global_batch=global_batch, shards=shards)


def check_order(record: SamplerType, context: Context) -> None:
    for n in SIZES:
        sampler = _sampler(record, n)
        for epoch in EPOCHS:
            order = sampler.order(epoch)
            where = f"{n} samples, epoch {epoch}"
            assert isinstance(order, np.ndarray) and order.dtype == np.int64, f"{where}: dtype"
            assert order.ndim == 1, f"{where}: order is {order.ndim}-D"
            assert sorted(order.tolist()) == list(range(n)), f"{where}: not every sample once"


def _shares(order: np.ndarray, world_size: int, batch_size: int) -> list[list[list[int]]]:
    """Per step, per rank: the sample indices that rank serves."""
    schedule = Schedule(order, world_size, batch_size)
    return [
        [[i for i, _ in schedule.batch(step, rank)] for rank in range(world_size)]
        for step in range(schedule.steps)
    ]


def check_ranks(record: SamplerType, context: Context) -> None:
    for world_size in (1, 2, 3, 4):
        for batch_size in (1, 3):
            g = world_size * batch_size
            ranks = [_sampler(record, 17, global_batch=g) for _ in range(world_size)]
            for epoch in EPOCHS:
                orders = [r.order(epoch) for r in ranks]
                assert all(np.array_equal(o, orders[0]) for o in orders), "ranks disagree"
                steps = _shares(orders[0], world_size, batch_size)
                for step in steps:
                    assert len({len(share) for share in step}) == 1, "unequal shares of a step"
                served = [i for step in steps for share in step for i in share]
                assert set(served) == set(range(17)), "a sample not served in the epoch"


def _batches(steps: list[list[list[int]]]) -> list[list[int]]:
    """Each step's global batch, whichever rank serves which part of it."""
    return [sorted(i for share in step for i in share) for step in steps]


def check_resume(record: SamplerType, context: Context) -> None:
    for epoch in EPOCHS:
        # Global batches of 12 from 96 samples: no step is padded, on 2, 3 or 4 ranks.
        run = _shares(_sampler(record, 96, global_batch=12).order(epoch), 2, 6)
        # A run resumed in a new process makes a new sampler and skips the steps served.
        resumed = _shares(_sampler(record, 96, global_batch=12).order(epoch), 2, 6)
        assert resumed == run, f"epoch {epoch}: a new sampler (a resumed run) serves other steps"
        for world_size in (3, 4):
            order = _sampler(record, 96, global_batch=12).order(epoch)
            elastic = _shares(order, world_size, 12 // world_size)
            assert _batches(elastic) == _batches(run), (
                f"epoch {epoch}: on {world_size} ranks instead of 2, other global batches"
            )
