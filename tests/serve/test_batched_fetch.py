"""``Dataset.batch``: a batch fetched at once is exactly the samples fetched one by one, for every
packer, labels mode, loss masks or none, overlong policy and shard layout; and the torch loader
fetches every step with one ``batch`` call."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.layout import MANIFEST
from gristmill.options import LABELS
from gristmill.plugin.overlong import POLICIES
from gristmill.serve.samples import IGNORE_INDEX

PACKERS = ("first-fit", "greedy-stream", "concat-chunk", "none")
KEYS = ("input_ids", "labels", "position_ids", "seq_lens")


@pytest.fixture(scope="module")
def prepared(prepared_dataset):
    """Three datasets in small shards: plain text (no masks), prompt/completion pairs (masked),
    and both (shards with masks and shards without), documents from 1 to about 400 tokens."""
    rng = np.random.default_rng(0)
    text = [{"text": f"d{i} " + "x" * int(rng.choice([0, 3, 40, 150, 400]))} for i in range(60)]
    qa = [
        {"prompt": f"q{i}? " + "p" * (i % 9), "completion": " a" * (i % 13 + 1)} for i in range(60)
    ]
    out = {}
    for name, files in (
        ("text", {"text": text}),
        ("qa", {"qa": qa}),
        ("mixed", {"text": text, "qa": qa}),
    ):
        out[name] = prepared_dataset(files, tokens_per_shard=300)
        shards = json.loads((out[name] / MANIFEST).read_text())["splits"]["train"]["shards"]
        assert len(shards) > 2
        masked = {"text": {False}, "qa": {True}, "mixed": {False, True}}[name]
        assert {shard["mask"] is not None for shard in shards} == masked
    return out


@functools.cache
def _open(path, **options):
    return gristmill.open_dataset(path, **options)


class _DocumentsOnly:
    """A shard reader with only what the protocol requires: no bulk ``spans``."""

    def __init__(self, reader):
        self.reader, self.num_documents = reader, reader.num_documents

    def lengths(self):
        return self.reader.lengths()

    def document(self, index):
        return self.reader.document(index)


def _reference(ds, index: int) -> dict[str, np.ndarray]:
    """Sample ``index`` by the contract, written out plainly: the plan's segments read one
    document at a time."""
    plan = ds.plan
    ids, loss, lens = [], [], []
    for j in range(plan.sample_bounds[index], plan.sample_bounds[index + 1]):
        tokens, mask = ds.documents.document(int(plan.seg_doc[j]))
        lo, n = int(plan.seg_start[j]), int(plan.seg_len[j])
        ids.append(tokens[lo : lo + n].astype(np.int64))
        loss.append(np.ones(n, bool) if mask is None else mask[lo : lo + n] != 0)
        lens.append(n)
    input_ids = np.concatenate(ids)
    lens = lens if ds.restart else [len(input_ids)]
    labels = np.where(np.concatenate(loss), input_ids, IGNORE_INDEX)
    for start, n in zip(np.cumsum([0, *lens[:-1]]), lens):
        if n:
            labels[start] = IGNORE_INDEX  # no label across a sequence start
    positions = np.concatenate([np.arange(n) for n in lens])
    if ds.labels == "shifted":
        lens[-1] -= 1
        return {
            "input_ids": input_ids[:-1],
            "labels": labels[1:],
            "position_ids": positions[:-1],
            "seq_lens": np.array([n for n in lens if n > 0], np.int64),
        }
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": positions,
        "seq_lens": np.array(lens, np.int64),
    }


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(KEYS)
    for key in KEYS:
        assert got[key].dtype == np.int64, key
        assert np.array_equal(got[key], want[key]), key


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    name=st.sampled_from(["text", "qa", "mixed"]),
    packer=st.sampled_from(PACKERS),
    restart=st.sampled_from([None, True, False]),
    labels=st.sampled_from(LABELS),
    overlong=st.sampled_from(POLICIES),
    seq_len=st.sampled_from([1, 2, 7, 64, 300]),
)
def test_a_batch_is_its_samples(prepared, data, name, packer, restart, labels, overlong, seq_len):
    ds = _open(
        prepared[name],
        seq_len=seq_len,
        packer=packer,
        restart=restart,
        labels=labels,
        overlong=overlong,
    )
    n = len(ds)
    if not n:
        assert ds.batch([]) == []
        return
    # Any order, repeats, negative indices: spans out of shard order and shards read twice.
    picks = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=12), label="picks")
    batch = ds.batch(picks)
    assert len(batch) == len(picks)
    fallback = copy.copy(ds)
    fallback.documents = _DocumentsOnly(ds.documents)
    for index, got, slow in zip(picks, batch, fallback.batch(np.array(picks))):
        want = _reference(ds, index % n)
        _same(got, want)
        _same(ds[index], want)
        _same(slow, want)


def test_batch_refuses_what_indexing_refuses(prepared):
    ds = _open(prepared["mixed"], seq_len=64, packer="first-fit")
    with pytest.raises(IndexError, match=f"sample {len(ds)} out of range for {len(ds)} samples"):
        ds.batch([0, len(ds), 1])
    with pytest.raises(IndexError, match="out of range"):
        ds.batch([-len(ds) - 1])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]
    with pytest.raises(TypeError):
        ds.batch([0.5])
    with pytest.raises(TypeError):
        ds[1.0]
    assert ds.batch([]) == []
    with pytest.raises(IndexError, match="document"):
        ds.documents.spans(np.array([ds.documents.num_documents]), np.array([0]), np.array([1]))


@pytest.mark.parametrize("padding_free", [False, True])
def test_the_loader_fetches_steps_with_one_batch_call(prepared, monkeypatch, padding_free):
    torch = pytest.importorskip("torch")
    import gristmill.torch
    from gristmill.serve.dataset import Dataset
    from gristmill.torch.loader import READ_AHEAD

    ds = gristmill.open_dataset(prepared["mixed"], seq_len=64, packer="first-fit")
    calls = []
    batch = Dataset.batch

    def counted(self, indices):
        calls.append(list(indices))
        return batch(self, indices)

    monkeypatch.setattr(Dataset, "batch", counted)
    collate = gristmill.torch.Collator(padding_free=padding_free)
    steps = list(
        gristmill.torch.dataloader(ds, batch_size=4, rank=0, world_size=1, collate_fn=collate)
    )
    # Without workers, the first step alone, then READ_AHEAD steps a call.
    assert len(steps) > READ_AHEAD and len(calls) == 1 + -(-(len(steps) - 1) // READ_AHEAD)
    assert [len(c) for c in calls[:2]] == [4, 4 * READ_AHEAD]
    served = [i for indices in calls for i in indices]
    assert sorted(served) == list(range(len(ds)))
    for k, got in enumerate(steps):
        want = collate([ds[i] for i in served[4 * k : 4 * k + 4]])
        assert set(got) == set(want)
        for key in want:
            assert (
                torch.equal(got[key], want[key])
                if torch.is_tensor(want[key])
                else got[key] == want[key]
            ), key
    # Workers fetch the same chunks of steps and send each chunk's batches back through
    # shared memory as one block (the 4-D attention masks apart): the same batches.
    monkeypatch.undo()
    loader = gristmill.torch.dataloader(
        ds, batch_size=4, rank=0, world_size=1, num_workers=2, collate_fn=collate
    )
    served = list(loader)
    for got, want in zip(served, steps, strict=True):
        assert all(torch.equal(got[key], want[key]) for key in want if torch.is_tensor(want[key]))
    blocks = [got["input_ids"].untyped_storage().data_ptr() for got in served]
    # The boundaries too: in the memory the samples' buffer has to spare (padding-free), in
    # the padded rows' block (padded).
    keys = (*KEYS, "cu_seq_lens_q", *(("cu_seqlens",) if padding_free else ()))
    assert all(len({got[key].untyped_storage().data_ptr() for key in keys}) == 1 for got in served)
    chunks = [blocks[:1], *(blocks[k : k + READ_AHEAD] for k in range(1, len(blocks), READ_AHEAD))]
    assert all(len(set(chunk)) == 1 for chunk in chunks)
    assert len(set(blocks)) == len(chunks)


def test_a_sample_changed_in_place_changes_nothing_else(prepared):
    ds = gristmill.open_dataset(prepared["qa"], seq_len=64, packer="first-fit")
    first, *rest = ds.batch([0, 1])
    before = [ds[0], *rest]
    for sample in (first, ds[0]):
        for array in sample.values():
            array[:] = 7
    for got, want in zip([ds[0], *ds.batch([0, 1])[1:]], before):
        _same(got, want)
    _same(ds.batch([0])[0], before[0])


@pytest.mark.parametrize("labels", ["unshifted", "shifted"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"block_mask": False},
        {"padding_free": True},
        {"padding_free": True, "block_mask": False},
    ],
)
@pytest.mark.parametrize("packer", ["first-fit", "concat-chunk"])
def test_a_batch_collates_as_its_samples_do(prepared, labels, options, packer):
    torch = pytest.importorskip("torch")
    import gristmill.torch

    ds = gristmill.open_dataset(prepared["qa"], seq_len=64, packer=packer, labels=labels)
    collate = gristmill.torch.Collator(**options)
    batch = ds.batch(list(range(12)))
    # concat-chunk's windows are all equally long: padded rows are views of the batch's own.
    full = packer == "concat-chunk" and options == {"block_mask": False}
    assert len(ds) > 12 and (len(set(batch.lengths())) == 1 or packer == "first-fit")
    for whole in (batch, batch.with_repeats([2, 7])):
        for cut in ([12], [5, 7], [1, 1, 3, 7]):
            pieces = whole.split(cut)
            wants = [collate([dict(sample) for sample in piece]) for piece in pieces]
            # Every piece collated first: one piece's cu_seqlens must not overwrite another's;
            # then all of them made together, as the loader does.
            for together in (False, True):
                collated = collate.batches(whole, cut) if together else [collate(p) for p in pieces]
                for got, want in zip(collated, wants, strict=True):
                    assert set(got) == set(want)
                    for key, value in want.items():
                        same = torch.equal(got[key], value) if torch.is_tensor(value) else None
                        assert same if same is not None else got[key] == value
                    if options.get("padding_free"):  # the rows are views of one storage
                        rows = ("input_ids", "labels", "position_ids")
                        assert len({got[key].untyped_storage().data_ptr() for key in rows}) == 1
                    if options.get("padding_free") or full:  # the rows are not copied
                        assert np.shares_memory(got["input_ids"].numpy(), whole.rows)
        with pytest.raises(ValueError, match="add up to"):
            collate.batches(batch, [5, 5])
