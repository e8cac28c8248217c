"""The first-fit packer: every document once, no sample over seq_len, close to the bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DatasetError
from gristmill_first_fit import FirstFitPacker

SEQ_LENS = st.one_of(st.sampled_from([1, 2, 8, 64, 2048]), st.integers(1, 3000))


def _check(lengths: np.ndarray, seq_len: int, plan) -> None:
    kept = np.minimum(lengths, seq_len)
    # Every non-empty document in exactly one sample, whole (truncated to seq_len).
    assert sorted(plan.seg_doc.tolist()) == np.flatnonzero(kept > 0).tolist()
    assert np.array_equal(plan.seg_len, kept[plan.seg_doc])
    assert not plan.seg_start.any()
    bounds = plan.sample_bounds
    assert bounds[0] == 0 and bounds[-1] == len(plan.seg_doc)
    assert (np.diff(bounds) > 0).all()  # no empty sample
    totals = np.add.reduceat(plan.seg_len, bounds[:-1]) if len(plan) else np.zeros(0)
    assert (totals <= seq_len).all()
    # Best-fit-decreasing uses at most 11/9 of the optimum plus one sample.
    lower = -(-int(kept.sum()) // seq_len)
    assert lower <= len(plan) <= 11 * lower // 9 + 1


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 5000), max_size=300), seq_len=SEQ_LENS)
def test_every_document_once_and_no_sample_over_seq_len(lengths, seq_len):
    lengths = np.asarray(lengths, np.int64)
    plan = FirstFitPacker().plan(lengths, seq_len)
    _check(lengths, seq_len, plan)
    again = FirstFitPacker().plan(lengths.copy(), seq_len)
    assert all(np.array_equal(a, b) for a, b in zip(vars(plan).values(), vars(again).values()))


def _samples(plan) -> list[list[tuple[int, int]]]:
    b = plan.sample_bounds
    return [
        list(zip(plan.seg_doc[b[i] : b[i + 1]].tolist(), plan.seg_len[b[i] : b[i + 1]].tolist()))
        for i in range(len(plan))
    ]


@pytest.mark.parametrize(
    ("lengths", "seq_len", "expected"),
    [
        # Exact fits close a sample; the longest goes first.
        ([4, 4, 8, 2, 6], 8, [[(2, 8)], [(4, 6), (3, 2)], [(0, 4), (1, 4)]]),
        # Best fit, not first fit: 3 goes to the sample with 3 free, not the one with 5.
        ([5, 7, 3], 10, [[(1, 7), (2, 3)], [(0, 5)]]),
        # Overlong documents are truncated; empty ones are not placed.
        ([0, 12, 1, 0], 5, [[(1, 5)], [(2, 1)]]),
        # A seq_len that is not a power of two; equal lengths keep document order.
        ([3, 3, 3, 3, 3], 7, [[(0, 3), (1, 3)], [(2, 3), (3, 3)], [(4, 3)]]),
        ([], 16, []),
    ],
)
def test_golden_plans(lengths, seq_len, expected):
    assert _samples(FirstFitPacker().plan(np.asarray(lengths, np.int64), seq_len)) == expected


def test_first_fit_needs_a_seq_len():
    with pytest.raises(DatasetError, match="pass seq_len"):
        FirstFitPacker().plan(np.asarray([3]), None)


def test_a_packed_dataset_serves_every_document_once(tmp_path, write_jsonl):
    rng = np.random.default_rng(0)
    records = [
        {"prompt": f"q{i} " * int(rng.integers(1, 30)), "completion": f"a{i} " * 3}
        if i % 3 == 0
        else {"text": f"doc{i} " * int(rng.integers(1, 60))}
        for i in range(300)
    ]
    src = [write_jsonl([r for r in records if "text" in r], "t.jsonl")]
    src.append(write_jsonl([r for r in records if "prompt" in r], "p.jsonl"))
    gristmill.prepare(src, tmp_path / "ds", progress=False)
    plain = gristmill.open_dataset(tmp_path / "ds")
    packed = gristmill.open_dataset(tmp_path / "ds", seq_len=1024, packer="first-fit")
    assert len(packed) < len(plain) // 4
    seen = []
    for sample in packed:
        ids, labels, positions, seq_lens = (
            sample[k] for k in ("input_ids", "labels", "position_ids", "seq_lens")
        )
        assert len(ids) == seq_lens.sum() <= 1024
        starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]])
        assert (positions[starts] == 0).all() and (labels[starts] == -100).all()
        for start, length in zip(starts, seq_lens):
            seen.append(ids[start : start + length].tolist())
    documents = [plain[i] for i in range(len(plain))]
    expected = sorted(d["input_ids"][:1024].tolist() for d in documents)
    assert sorted(seen) == expected
    # The loss mask survives packing: the same labels, document by document.
    by_ids = {tuple(d["input_ids"].tolist()): d["labels"].tolist() for d in documents}
    for sample in packed:
        starts = np.concatenate([[0], np.cumsum(sample["seq_lens"])[:-1]])
        for start, length in zip(starts, sample["seq_lens"]):
            doc = tuple(sample["input_ids"][start : start + length].tolist())
            assert sample["labels"][start : start + length].tolist() == by_ids[doc]
