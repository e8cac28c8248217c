"""Mixtures: exact proportions per epoch, the repetition cap, down-sampled datasets continuing
across epochs, and the loader serving and resuming a mixture like one dataset."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DatasetError, OptionError
from gristmill.serve.mixture import apportion

SIZES = {"a": 50, "b": 200, "c": 30}


@pytest.fixture(scope="module")
def datasets(prepared_dataset):
    opened = {}
    for name, size in SIZES.items():
        path = prepared_dataset({name: [{"text": f"{name}-{i}"} for i in range(size)]})
        opened[name] = gristmill.open_dataset(path)  # one document per sample
    return opened


def _names(mix, keys):
    """Which dataset each key is from, and which of its samples."""
    out = []
    for key in keys:
        text = bytes(mix[int(key)]["input_ids"][:-1].astype(np.uint8)).decode()
        out.append(text)
    return out


def test_an_epoch_holds_each_dataset_in_its_exact_share(datasets):
    mix = gristmill.mixture(datasets, {"a": 0.5, "b": 0.3, "c": 0.2})
    # As long as it can be without a repeat: "a" runs out first, at 100 entries.
    assert mix.num_samples == 100 and mix.counts.tolist() == [50, 30, 20]
    served = _names(mix, mix.entries(0))
    assert len(set(served)) == 100  # no sample twice
    assert Counter(s.split("-")[0] for s in served) == {"a": 50, "b": 30, "c": 20}


def test_a_dataset_sampled_down_continues_next_epoch(datasets):
    mix = gristmill.mixture(datasets, {"a": 0.5, "b": 0.3, "c": 0.2})
    b = [s for e in range(7) for s in _names(mix, mix.entries(e)) if s.startswith("b")]
    assert len(set(b[:200])) == 200  # every sample of b before any comes again
    assert len(set(b)) == 200 and len(b) == 210


def test_max_repeat_caps_repetition_and_lengthens_the_epoch(datasets):
    mix = gristmill.mixture(datasets, [0.5, 0.3, 0.2], max_repeat=3)
    assert mix.num_samples == 300 and mix.counts.tolist() == [150, 90, 60]
    assert max(Counter(mix.entries(1).tolist()).values()) == 3
    with pytest.raises(DatasetError, match="more than max_repeat=2 times"):
        gristmill.mixture(datasets, [0.5, 0.3, 0.2], max_repeat=2, num_samples=400)
    unlimited = gristmill.mixture(datasets, [0.5, 0.3, 0.2], num_samples=400)
    assert unlimited.counts.tolist() == [200, 120, 80]


def test_what_a_mixture_refuses(datasets):
    with pytest.raises(DatasetError, match="one weight per dataset"):
        gristmill.mixture(datasets, {"a": 1, "b": 1})
    with pytest.raises(DatasetError, match="non-negative"):
        gristmill.mixture(datasets, {"a": 1, "b": -1, "c": 1})
    with pytest.raises(DatasetError, match="3 datasets but 2 weights"):
        gristmill.mixture(list(datasets.values()), [1, 2])
    with pytest.raises(OptionError, match="max_repeat must be a positive integer, got 0"):
        gristmill.mixture(datasets, [1, 1, 1], max_repeat=0)
    zero = gristmill.mixture(datasets, {"a": 1, "b": 0, "c": 1})
    assert zero.counts.tolist() == [30, 0, 30]


@given(
    weights=st.lists(st.integers(0, 5), min_size=1, max_size=5).filter(any),
    total=st.integers(0, 500),
)
def test_apportion_is_exact_and_within_one_of_the_share(weights, total):
    w = np.array(weights, float) / sum(weights)
    counts = apportion(w, total)
    assert counts.sum() == total and np.all(np.abs(counts - w * total) < 1)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    weights=st.lists(st.integers(0, 4), min_size=3, max_size=3).filter(any),
    max_repeat=st.one_of(st.none(), st.integers(1, 3)),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 5),
)
def test_every_epoch_keeps_the_proportions_and_the_cap(datasets, weights, max_repeat, seed, epoch):
    mix = gristmill.mixture(datasets, weights, max_repeat=max_repeat, seed=seed)
    entries = mix.entries(epoch)
    assert len(entries) == mix.num_samples
    per_dataset = np.bincount(np.searchsorted(mix.offsets, entries, side="right") - 1, minlength=3)
    assert per_dataset.tolist() == mix.counts.tolist()
    assert max(Counter(entries.tolist()).values(), default=0) <= (max_repeat or 1)
    assert np.array_equal(entries, mix.entries(epoch))  # deterministic
    for i, (count, size) in enumerate(zip(mix.counts, SIZES.values())):
        if 0 < count < size:  # sampled down: the first ceil(n / c) epochs serve every sample
            first = np.concatenate([mix.entries(e) for e in range(-(-size // count))])
            mine = first[(first >= mix.offsets[i]) & (first < mix.offsets[i + 1])]
            assert len(np.unique(mine)) == size


def _keys(samples):
    return [(bytes(s["input_ids"].astype(np.int64)), bool(s.get("repeat", False))) for s in samples]


def _epoch(loaders):
    """Everything the ranks' loaders serve from their position to the end of the epoch."""
    return [key for batches in zip(*map(list, loaders)) for batch in batches for key in batch]


def test_a_loader_serves_and_resumes_a_mixture_like_one_dataset(datasets):
    pytest.importorskip("torch", reason="the data loader needs torch (the min envs lack it)")
    import gristmill.torch

    mix = gristmill.mixture(datasets, {"a": 0.5, "b": 0.3, "c": 0.2}, max_repeat=2)

    def loaders(world=2, **options):
        return [
            gristmill.torch.dataloader(
                mix, batch_size=6, rank=r, world_size=world, collate_fn=_keys, **options
            )
            for r in range(world)
        ]

    for epoch in (0, 1):
        ranks = loaders()
        for loader in ranks:
            loader.set_epoch(epoch)
        served = _epoch(ranks)
        real = Counter(key for key, repeat in served if not repeat)
        assert real == Counter(key for key, _ in _keys(mix[int(k)] for k in mix.entries(epoch)))
    whole = _epoch(loaders(num_workers=0))
    ranks = loaders()
    head = [
        key for batches in zip(*(islice(iter(x), 5) for x in ranks)) for b in batches for key in b
    ]
    state = json.loads(json.dumps(ranks[0].state_dict()))
    resumed = loaders(num_workers=2)
    for loader in resumed:
        loader.load_state_dict(state)
    assert head + _epoch(resumed) == whole
    other = gristmill.torch.dataloader(
        gristmill.mixture(datasets, {"a": 0.4, "b": 0.4, "c": 0.2}, max_repeat=2),
        batch_size=6,
    )
    with pytest.raises(gristmill.GristmillError, match="the dataset, split or packing"):
        other.load_state_dict(state)


def test_a_batch_of_a_mixture_is_its_samples_one_by_one(datasets):
    mix = gristmill.mixture(datasets, {"a": 0.5, "b": 0.3, "c": 0.2}, max_repeat=2)
    keys = np.random.default_rng(0).permutation(mix.entries(0))[:50]
    got, want = mix.batch(keys), [mix[int(k)] for k in keys]
    assert len(got) == len(want) == 50
    for sample, expected in zip(got, want):
        assert sample.keys() == expected.keys()
        assert all(np.array_equal(sample[key], expected[key]) for key in expected)
    assert mix.batch([]) == []
    with pytest.raises(IndexError, match=f"sample {len(mix)} out of range"):
        mix.batch([0, len(mix)])
