"""Samplers and the resumable loader: exact cover, equal steps, determinism, resume, elastic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gristmill.errors import GristmillError
from gristmill.plugin.components import SamplerType
from gristmill.plugin.manager import get_manager
from gristmill.serve.schedule import Schedule

SAMPLERS = ("sequential", "random", "distributed", "distributed-length-grouped", "shard-blocks")


def _order(sampler: str, n: int, seed: int, epoch: int, global_batch: int, **options):
    lengths = np.random.default_rng(n).integers(1, 500, n)
    record = get_manager().get(SamplerType, sampler)
    options = record.check_options(options)  # as gristmill checks the user's options
    shards = np.arange(n, dtype=np.int64) // 5  # samples in index order fill shards of 5
    return record.factory(
        n, seed=seed, lengths=lengths, global_batch=global_batch, shards=shards, **options
    ).order(epoch)


@given(
    n=st.integers(0, 300),
    world=st.integers(1, 16),
    batch=st.integers(1, 9),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 5),
    sampler=st.sampled_from(SAMPLERS),
)
def test_every_sample_once_and_equal_steps_on_every_rank(
    n, world, batch, drop_last, seed, epoch, sampler
):
    order = _order(sampler, n, seed, epoch, world * batch)
    assert sorted(order.tolist()) == list(range(n))  # a sampler orders, it never repeats
    assert np.array_equal(order, _order(sampler, n, seed, epoch, world * batch))
    schedule = Schedule(order, world, batch, drop_last)
    served = []
    for step in range(schedule.steps):
        shares = [schedule.batch(step, rank) for rank in range(world)]
        assert len({len(share) for share in shares}) == 1 and shares[0]  # equal, never empty
        assert len(shares[0]) <= batch
        served += [item for share in shares for item in share]
    real = [i for i, repeat in served if not repeat]
    repeats = [i for i, repeat in served if repeat]
    assert len(set(real)) == len(real)
    if drop_last:
        assert not repeats and len(real) == n - n % (world * batch)
        assert all(len(schedule.batch(s, 0)) == batch for s in range(schedule.steps))
    else:
        assert sorted(real) == list(range(n))
        assert len(repeats) == (-n) % world < world
        # Global batches are the order, cut every world × batch positions.
        assert [i for i, _ in served][:n] == order.tolist()


@given(
    n=st.integers(0, 200),
    world=st.integers(1, 8),
    batch=st.integers(1, 9),
    drop_last=st.booleans(),
    data=st.data(),
)
def test_shares_of_several_steps_are_their_batches_one_after_another(
    n, world, batch, drop_last, data
):
    schedule = Schedule(np.random.default_rng(n).permutation(n), world, batch, drop_last)
    first = data.draw(st.integers(0, schedule.steps))
    stop = data.draw(st.integers(first, schedule.steps))
    rank = data.draw(st.integers(0, world - 1))
    indices, repeats, counts = schedule.shares(range(first, stop), rank)
    steps = [schedule.batch(step, rank) for step in range(first, stop)]
    assert counts == [len(step) for step in steps]
    assert list(zip(indices.tolist(), repeats.tolist())) == [key for step in steps for key in step]


def test_length_grouped_steps_hold_similar_lengths():
    n, global_batch = 4000, 32
    lengths = np.random.default_rng(0).integers(1, 4000, n)
    factory = get_manager().get(SamplerType, "distributed-length-grouped").factory
    order = factory(n, seed=3, lengths=lengths, global_batch=global_batch).order(0)
    steps = lengths[order[: n - n % global_batch]].reshape(-1, global_batch)
    spread = (steps.max(1) - steps.min(1)).mean()
    shuffled = lengths[np.random.default_rng(1).permutation(n)[: len(steps) * global_batch]]
    assert (
        spread
        < 0.1
        * (
            shuffled.reshape(-1, global_batch).max(1) - shuffled.reshape(-1, global_batch).min(1)
        ).mean()
    )
    assert steps[0].max() == lengths.max()  # the longest step first: out of memory at once
    assert not np.array_equal(order, factory(n, seed=3, lengths=lengths, global_batch=32).order(1))


@pytest.mark.parametrize(
    ("sampler", "options", "message"),
    [
        ("sequential", {"shuffle": True}, "'sequential' has no option 'shuffle': it takes no"),
        ("distributed", {"shufle": False}, "no option 'shufle'; did you mean shuffle"),
        ("distributed-length-grouped", {"megabatch": 0}, "megabatch must be a positive"),
    ],
)
def test_sampler_options_are_checked(sampler, options, message):
    with pytest.raises(GristmillError, match=message):
        _order(sampler, 10, 0, 0, 4, **options)
