"""The resumable torch loader: resume once and twice, elastic resume, workers, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import GristmillError
from tests.helpers import examples
from tests.serve.test_sampling import SAMPLERS

torch = pytest.importorskip("torch")
import gristmill.torch  # noqa: E402


@pytest.fixture(scope="module")
def prepared(prepared_dataset):
    return prepared_dataset([{"text": f"document {i} {'x' * (i % 23)}"} for i in range(157)])


def _loader(path, rank, world, batch, **options):
    ds = gristmill.open_dataset(path, seed=options.pop("seed", 0))
    return gristmill.torch.dataloader(
        ds, batch_size=batch, rank=rank, world_size=world, collate_fn=_keys, **options
    )


def _keys(samples):
    """A batch as the samples' identities (every document here is different)."""
    return [(bytes(s["input_ids"].astype(np.int64)), bool(s.get("repeat", False))) for s in samples]


def _run(loaders, steps=None):
    """Batches per step, all ranks together, from each loader's current position."""
    its = [iter(loader) for loader in loaders]
    out = []
    while steps is None or len(out) < steps:
        batches = [next(it, None) for it in its]
        if batches[0] is None:
            assert all(b is None for b in batches)  # equal steps
            break
        out.append(batches)
    return out


# Each example runs a whole epoch on every rank three times: a quarter of the profile's
# examples.
@settings(max_examples=examples(0.25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.sampled_from([1, 2, 3, 4, 6]),
    batch=st.integers(1, 5),
    sampler=st.sampled_from(SAMPLERS),
    drop_last=st.booleans(),
    cut=st.floats(0, 1),
    cut2=st.floats(0, 1),
    seed=st.integers(0, 1000),
)
def test_resume_once_twice_and_elastic(prepared, world, batch, sampler, drop_last, cut, cut2, seed):
    options = dict(sampler=sampler, drop_last=drop_last, seed=seed)
    whole = _run([_loader(prepared, r, world, batch, **options) for r in range(world)])
    steps = len(whole)
    assert steps == len(_loader(prepared, 0, world, batch, **options))
    # Stop after k steps, resume (from rank 0's state, as every rank's is the same), stop
    # again, resume again.
    k = int(cut * steps)
    first = [_loader(prepared, r, world, batch, **options) for r in range(world)]
    before = _run(first, k)
    state = first[0].state_dict()
    assert all(loader.state_dict() == state for loader in first)
    second = [_loader(prepared, r, world, batch, **options) for r in range(world)]
    for loader in second:
        loader.load_state_dict(state)
    k2 = int(cut2 * (steps - k))
    middle = _run(second, k2)
    third = [_loader(prepared, r, world, batch, **options) for r in range(world)]
    for loader in third:
        loader.load_state_dict(second[0].state_dict())
    assert before + middle + _run(third) == whole
    # Elastic: the same global batch on another number of ranks serves the same sets.
    global_batch = world * batch
    for other in (w for w in (1, 2, 3, 4, 6, 12) if global_batch % w == 0 and w != world):
        elastic = [
            _loader(prepared, r, other, global_batch // other, **options) for r in range(other)
        ]
        for loader in elastic:
            loader.load_state_dict(state)
        rest = _run(elastic)
        assert len(rest) == steps - k
        for old, new in zip(whole[k:], rest):
            real = lambda step: sorted(key for b in step for key, repeat in b if not repeat)  # noqa: E731
            assert real(old) == real(new)


def test_batches_do_not_depend_on_workers_and_epochs_differ(prepared):
    base = _run([_loader(prepared, r, 2, 4) for r in range(2)])
    for workers in (1, 2, 3, 4):
        assert _run([_loader(prepared, r, 2, 4, num_workers=workers) for r in range(2)]) == base
    loader = _loader(prepared, 0, 1, 8)
    first, second = list(loader), list(loader)  # a finished pass moves to the next epoch
    assert loader.epoch == 2 and first != second
    assert sorted(k for b in first for k in b) == sorted(k for b in second for k in b)
    loader.set_epoch(0)
    assert list(loader) == first


def test_a_state_from_another_run_is_refused(prepared):
    state = _loader(prepared, 0, 2, 4).state_dict()
    with pytest.raises(GristmillError, match=r"seed: 0 in the state, 5 here"):
        _loader(prepared, 0, 2, 4, seed=5).load_state_dict(state)
    with pytest.raises(GristmillError, match="sampler: 'distributed' in the state, 'sequential'"):
        _loader(prepared, 0, 2, 4, sampler="sequential").load_state_dict(state)
    with pytest.raises(GristmillError, match="global batch is 8 samples per step"):
        _loader(prepared, 0, 2, 3).load_state_dict(state)
    with pytest.raises(GristmillError, match="not a gristmill-loader state"):
        _loader(prepared, 0, 2, 4).load_state_dict({"epoch": 1})
    packed = gristmill.open_dataset(prepared, seq_len=64, packer="first-fit")
    other = gristmill.torch.dataloader(packed, batch_size=4, rank=0, world_size=2)
    with pytest.raises(GristmillError, match="the dataset, split or packing"):
        other.load_state_dict(state)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_rebuilt_from_its_parts_is_refused(prepared, workers):
    """accelerate's prepare (tests/integrations/test_accelerate.py) rebuilds a loader from its
    dataset and batch sampler: it would serve lists of batches, or shard the rank's steps
    again."""
    loader = _loader(prepared, 0, 1, 4, num_workers=workers, persistent_workers=bool(workers))
    first = _run([loader], steps=3)
    rebuilt = torch.utils.data.DataLoader(
        loader.dataset, batch_sampler=loader.batch_sampler, collate_fn=loader.collate_fn
    )
    with pytest.raises(GristmillError, match="iterate it as it is"):
        next(iter(rebuilt))
    assert _run([loader], steps=3) != first and loader.step == 6  # its own passes go on
    loader.set_epoch(0)
    assert _run([loader], steps=3) == first


def test_rank_comes_from_the_environment(prepared, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    loader = _loader(prepared, None, None, 4)
    assert (loader.rank, loader.world_size) == (2, 3)
    with pytest.raises(GristmillError, match=r"rank must be in \[0, world_size\)"):
        _loader(prepared, 3, 3, 4)
