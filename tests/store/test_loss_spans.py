"""The loss index (``index/SPLIT.loss``): the runs of loss tokens of a split with masks. The
samples without loss found from it are exactly those the masks give (random masks and plans);
a malformed one is refused."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.errors import DatasetError
from gristmill.serve.samples import carry_no_loss, runs_no_loss
from gristmill.store.index import loss_runs, read_loss_runs


@st.composite
def masked_plans(draw):
    """Documents with masks (0, 1 or another nonzero byte; some shards without a mask), and
    samples of segments cut anywhere inside them."""
    lengths = draw(st.lists(st.integers(1, 30), min_size=1, max_size=12))
    masks = [
        np.array(draw(st.lists(st.sampled_from([0, 0, 1, 7]), min_size=n, max_size=n)), np.uint8)
        for n in lengths
    ]
    segments = draw(st.lists(st.integers(1, 4), min_size=1, max_size=8))
    seg = []
    for _ in range(sum(segments)):
        doc = draw(st.integers(0, len(lengths) - 1))
        start = draw(st.integers(0, lengths[doc] - 1))
        seg.append((doc, start, draw(st.integers(1, lengths[doc] - start))))
    cuts = (
        sorted(draw(st.sets(st.integers(1, len(lengths) - 1), max_size=3)))
        if len(lengths) > 1
        else []
    )
    unmasked = draw(st.sets(st.integers(0, len(cuts))))
    return lengths, masks, seg, segments, cuts, unmasked


@settings(max_examples=400, deadline=None)
@given(masked_plans(), st.booleans())
def test_the_runs_give_the_samples_without_loss_the_masks_give(case, restart):
    lengths, masks, seg, segments, cuts, unmasked = case
    shards = np.split(np.arange(len(lengths)), cuts)
    for k in unmasked:  # a shard without a mask: every token carries loss
        for d in shards[k]:
            masks[d] = np.ones(lengths[d], np.uint8)
    # The index as prepare writes it: each shard's runs, in the split's token positions.
    runs, at = [], 0
    for k, docs in enumerate(shards):
        shard_mask = np.concatenate([masks[d] for d in docs])
        runs.append(
            np.array([[at, at + len(shard_mask)]]) if k in unmasked else loss_runs(shard_mask) + at
        )
        at += len(shard_mask)
    runs = np.concatenate(runs).astype(np.int64)
    doc_at = np.cumsum(lengths) - np.array(lengths)
    docs, starts, lens = (np.array(column, np.int64) for column in zip(*seg))
    mask = np.concatenate([masks[d][s : s + n] for d, s, n in seg])
    expected = carry_no_loss(mask, lens, segments, restart=restart)
    got = runs_no_loss(runs, doc_at[docs] + starts, lens, segments, restart=restart)
    assert got.tolist() == expected.tolist()


def test_runs_of_a_mask():
    mask = np.array([0, 1, 1, 0, 3, 0, 0, 1], np.uint8)
    assert loss_runs(mask).tolist() == [[1, 3], [4, 5], [7, 8]]
    assert loss_runs(np.zeros(0, np.uint8)).shape == (0, 2)


@pytest.mark.parametrize(
    "runs, problem",
    [
        ([[3, 5], [4, 6]], "not ascending"),
        ([[3, 3]], "not ascending"),
        ([[0, 10**9]], "outside the split"),
    ],
)
def test_a_malformed_loss_index_is_refused(tmp_path, runs, problem):
    data = np.array(runs, "<i8").tobytes()
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "train.loss").write_bytes(data)
    entry = {
        "path": "index/train.loss",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    with pytest.raises(DatasetError, match=problem):
        read_loss_runs(tmp_path, entry, 100)
