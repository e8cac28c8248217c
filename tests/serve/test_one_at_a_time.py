"""The map-style paths that trainers take: ``ds[i]`` alone, torch's plain DataLoader over the
dataset (which asks ``__getitems__`` for a batch's samples) and iterating the dataset, each
serving exactly the samples ``ds.batch`` does."""

from __future__ import annotations

import numpy as np
import pytest

import gristmill
from gristmill.serve.dataset import ONE_BY_ONE, SAMPLE_BLOCK
from gristmill.serve.samples import SampleBatch

KEYS = ("input_ids", "labels", "position_ids", "seq_lens")


@pytest.fixture(scope="module")
def mixed(prepared_dataset):
    """Plain text and prompt/completion pairs in small shards: masks in some shards only."""
    rng = np.random.default_rng(1)
    text = [{"text": f"d{i} " + "x" * int(rng.choice([1, 30, 120, 300]))} for i in range(50)]
    qa = [
        {"prompt": f"q{i}? " + "p" * (i % 7), "completion": " a" * (i % 11 + 1)} for i in range(50)
    ]
    return prepared_dataset({"text": text, "qa": qa}, tokens_per_shard=400)


def _same(got, want):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


@pytest.mark.parametrize("packer", ["first-fit", "none", "concat-chunk"])
@pytest.mark.parametrize("labels", ["unshifted", "shifted"])
@pytest.mark.parametrize("seq_len", [96, 2048])
def test_a_sample_alone_is_the_batchs(mixed, packer, labels, seq_len):
    ds = gristmill.open_dataset(mixed, seq_len=seq_len, packer=packer, labels=labels)
    if seq_len == 2048 and packer == "first-fit":  # samples read both ways (see ONE_BY_ONE)
        segments = np.diff(ds.plan.sample_bounds)
        assert segments.max() > ONE_BY_ONE >= segments.min()
    order = np.random.default_rng(0).permutation(len(ds))
    for index, want in zip(order.tolist(), ds.batch(order)):
        _same(ds[index], want)
        _same(ds[index - len(ds)], want)


def test_getitems_is_a_list_of_the_batchs_samples(mixed):
    ds = gristmill.open_dataset(mixed, seq_len=96, packer="first-fit")
    picks = [5, 0, 5, len(ds) - 1, -2]
    got = ds.__getitems__(picks)
    assert type(got) is not SampleBatch and isinstance(got, list)
    assert isinstance(got.batch, SampleBatch) and len(got.batch) == len(picks)
    for index, sample, in_batch in zip(picks, got, got.batch):
        _same(sample, ds[index])
        _same(sample, in_batch)
    assert ds.__getitems__([]) == []
    with pytest.raises(IndexError, match="out of range"):
        ds.__getitems__([len(ds)])


@pytest.mark.parametrize("labels", ["unshifted", "shifted"])
def test_a_plain_dataloader_serves_the_samples_of_its_sampler(mixed, labels):
    torch = pytest.importorskip("torch")
    from gristmill.torch import Collator

    ds = gristmill.open_dataset(mixed, seq_len=96, packer="first-fit", labels=labels)
    order = np.random.default_rng(2).permutation(len(ds)).tolist()
    plain = torch.utils.data.DataLoader(ds, batch_size=5, sampler=order, collate_fn=list)
    served = [sample for batch in plain for sample in batch]
    assert len(served) == len(ds)
    for index, sample in zip(order, served):
        _same(sample, ds[index])
    collator = Collator(padding_free=True, block_mask=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=order, collate_fn=collator)
    for k, batch in enumerate(loader):
        want = collator([ds[i] for i in order[5 * k : 5 * k + 5]])
        assert batch.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(batch[key], value) if torch.is_tensor(value) else batch[key] == value


def test_iterating_serves_every_sample_in_order_a_block_at_a_time(mixed):
    ds = gristmill.open_dataset(mixed, seq_len=64, packer="first-fit")
    assert len(ds) > 2 * SAMPLE_BLOCK + 1  # several blocks and a partial one
    served = list(ds)
    assert len(served) == len(ds)
    for index, sample in enumerate(served):
        _same(sample, ds[index])
    order = ds.sampler("random", global_batch=1).order(3)
    for index, sample in zip(order.tolist(), ds.samples("random", epoch=3)):
        _same(sample, ds[index])
