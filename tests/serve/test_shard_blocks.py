"""The shard-blocks sampler: a permutation from (seed, epoch) alone; at most ``window`` shards
started and not finished at any point of a group's order; with ``partitions=P`` and ``P``
nodes (or a number of nodes dividing ``P``), each node's shares read its own groups' shards
in every whole step; the same order from a new sampler (a resumed run). The kit's order, ranks
and resume checks run for it in tests/plugin/test_conformance.py, as for every sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
from gristmill.errors import GristmillError
from gristmill.plugin.components import SamplerType
from gristmill.plugin.manager import get_manager
from gristmill.serve.schedule import Schedule


def _sampler(shards, global_batch: int = 4, seed: int = 0, **options):
    record = get_manager().get(SamplerType, "shard-blocks")
    n = 0 if shards is None else len(shards)
    return record.factory(
        n,
        seed=seed,
        lengths=np.ones(n, np.int64),
        global_batch=global_batch,
        shards=shards,
        **record.check_options(options),
    )


@st.composite
def layouts(draw) -> np.ndarray:
    """Each sample's shard: shards of 1 to 40 samples, numbered with gaps (a shard holding no
    sample's first token), the samples in shard order or not (a packer may mix documents)."""
    sizes = draw(st.lists(st.integers(1, 40), max_size=30))
    shards = np.repeat(np.arange(len(sizes), dtype=np.int64) * draw(st.integers(1, 3)), sizes)
    if draw(st.booleans()):
        shards = shards[np.random.default_rng(draw(st.integers(0, 99))).permutation(len(shards))]
    return shards


def most_open(sequence: np.ndarray, shards: np.ndarray) -> int:
    """The most shards started and not finished at any point of ``sequence`` (sample indices)."""
    if not len(sequence):
        return 0
    of = shards[sequence]
    first = np.unique(of, return_index=True)[1]
    last = len(of) - 1 - np.unique(of[::-1], return_index=True)[1]
    events = np.zeros(len(of) + 1, np.int64)
    np.add.at(events, first, 1)
    np.add.at(events, last + 1, -1)
    return int(np.cumsum(events).max())


def in_group(order: np.ndarray, members: np.ndarray) -> np.ndarray:
    """The samples of ``order`` that are ``members``, in order."""
    return order[np.isin(order, members)]


@given(
    shards=layouts(),
    window=st.integers(1, 6),
    partitions=st.integers(1, 4),
    part=st.integers(1, 7),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 4),
)
def test_a_permutation_with_few_shards_open_in_each_group(
    shards, window, partitions, part, shuffle, seed, epoch
):
    options = dict(window=window, partitions=partitions, shuffle=shuffle, seed=seed)
    sampler = _sampler(shards, partitions * part, **options)
    order = sampler.order(epoch)
    assert order.dtype == np.int64 and sorted(order.tolist()) == list(range(len(shards)))
    # A resumed run makes a new sampler: the same order.
    assert np.array_equal(_sampler(shards, partitions * part, **options).order(epoch), order)
    members = sampler.samples
    assert sorted(np.concatenate(members).tolist()) == list(range(len(shards)))
    for group, samples in zip(sampler.groups, members):
        assert set(shards[samples].tolist()) == set(group.tolist())
        assert most_open(in_group(order, samples), shards) <= window
    # Groups of equal size, but for the short last step's samples.
    whole = len(shards) // (partitions * part) * part
    assert all(whole <= len(samples) <= whole + part for samples in members)
    if not shuffle:  # shards in index order, their samples in index order
        listing = np.concatenate([in_group(order, samples) for samples in members])
        assert listing.tolist() == sorted(range(len(shards)), key=lambda i: (shards[i], i))


@given(
    shards=layouts(),
    partitions=st.integers(1, 4),
    per_node=st.integers(1, 3),
    batch=st.integers(1, 4),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 4),
)
def test_each_node_reads_its_own_groups_shards_in_every_whole_step(
    shards, partitions, per_node, batch, data, seed, epoch
):
    """``P`` nodes of ``per_node`` ranks (or fewer nodes, a number dividing ``P``): node
    ``n``'s shares of every whole step hold only its groups' shards."""
    nodes = data.draw(st.sampled_from([d for d in range(1, partitions + 1) if partitions % d == 0]))
    batch *= partitions // nodes  # so that every group has its equal part of a step
    world = nodes * per_node
    global_batch = world * batch
    sampler = _sampler(shards, global_batch, seed=seed, partitions=partitions)
    schedule = Schedule(sampler.order(epoch), world, batch)
    for step in range(len(shards) // global_batch):
        for node in range(nodes):
            share = partitions // nodes  # groups a node reads
            own = np.concatenate(sampler.groups[node * share : (node + 1) * share])
            for rank in range(node * per_node, (node + 1) * per_node):
                read = shards[[i for i, _ in schedule.batch(step, rank)]]
                assert np.isin(read, own).all(), f"step {step}: node {node} reads another's"


def test_the_order_mixes_shards_and_changes_every_epoch():
    shards = np.arange(2000) // 50  # 40 shards of 50 samples
    sampler = _sampler(shards, 16, window=4)
    first, second = sampler.order(0), sampler.order(1)
    assert not np.array_equal(first, second)
    visits = [list(dict.fromkeys(shards[o].tolist())) for o in (first, second)]
    assert visits[0] != visits[1] and visits[0] != sorted(visits[0])
    # Away from the epoch's ends, a step's samples come from about ``window`` shards.
    steps = shards[first].reshape(-1, 16)[20:-20]
    assert np.mean([len(set(step.tolist())) for step in steps]) > 3
    assert most_open(first, shards) == 4  # the window, reached


def test_a_number_ending_the_name_sets_the_window():
    record = get_manager().get(SamplerType, "shard-blocks-3")
    assert record.check_options({}) == {"window": 3}


@pytest.mark.parametrize(
    ("shards", "options", "message"),
    [
        (None, {}, "cannot say which shard holds a sample.*use the distributed sampler"),
        (np.arange(8) // 2, {"partitions": 3}, "partitions=3 must divide the global batch"),
        (np.arange(8) // 2, {"window": 0}, "window must be a positive integer"),
        (np.arange(8) // 2, {"shuffle": "no"}, "shuffle must be true or false"),
    ],
)
def test_wrong_options_and_datasets_are_refused(shards, options, message):
    with pytest.raises(GristmillError, match=message):
        _sampler(shards, 4, **options)


def test_over_a_prepared_dataset_and_refused_by_a_mixture(prepared_dataset):
    path = prepared_dataset(
        [{"text": f"doc {i} " * (i % 23 + 1)} for i in range(500)], tokens_per_shard=1500
    )
    ds = gristmill.open_dataset(path, seq_len=64, packer="first-fit")
    shards = ds.sample_shards()
    assert len(np.unique(shards)) > 8
    order = ds.sampler("shard-blocks", global_batch=4, window=2).order(0)
    assert sorted(order.tolist()) == list(range(len(ds)))
    assert most_open(order, shards) <= 2
    mix = gristmill.mixture([ds, ds], [0.5, 0.5])
    with pytest.raises(GristmillError, match="use the distributed sampler"):
        mix.sampler("shard-blocks", global_batch=4)
