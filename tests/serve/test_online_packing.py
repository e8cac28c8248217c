"""The online packers, greedy-stream and concat-chunk: exact cover, bounded buffers, and the
same plan whether documents arrive all at once, in batches, or through ``open_dataset``."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DatasetError, OptionError
from gristmill.plugin.overlong import POLICIES
from gristmill.plugin.packing import plan_from_samples
from gristmill.serve.samples import build_sample
from gristmill_concat_chunk import ConcatChunkPacker
from gristmill_greedy_stream import GreedyStreamPacker
from gristmill_none_packer import NonePacker
from tests.serve.test_packing import SEQ_LENS, _check, _samples

LENGTHS = st.lists(st.integers(0, 5000), max_size=300)


def _in_batches(packer, lengths: np.ndarray, seq_len: int, cuts: list[int], watch=None):
    """The plan of documents pushed in batches cut at ``cuts``."""
    online = packer.online(seq_len)
    samples = []
    edges = [0, *sorted(c % (len(lengths) + 1) for c in cuts), len(lengths)]
    for lo, hi in pairwise(edges):
        samples += online.push(range(lo, hi), lengths[lo:hi])
        if watch is not None:
            watch(online)
    return plan_from_samples(samples + online.flush(), online.dropped)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))


@given(
    lengths=LENGTHS,
    seq_len=SEQ_LENS,
    overlong=st.sampled_from(POLICIES),
    buffer_size=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_greedy_stream_covers_everything_within_its_buffer(
    lengths, seq_len, overlong, buffer_size, cuts
):
    lengths = np.asarray(lengths, np.int64)
    packer = GreedyStreamPacker(overlong=overlong, buffer_size=buffer_size)
    plan = packer.plan(lengths, seq_len)
    _check(lengths, seq_len, plan, overlong, best_fit_bound=False)
    lower = -(-int(plan.seg_len.sum()) // seq_len)
    assert len(plan) <= 2 * lower + buffer_size  # every closed sample but a few is over half full

    def bounded(online):
        assert len(online.open) <= buffer_size

    # However the documents arrive, the same samples: batching never changes a plan.
    assert _same(_in_batches(packer, lengths, seq_len, cuts, bounded), plan)
    # Same lengths, same plan.
    assert _same(
        GreedyStreamPacker(overlong=overlong, buffer_size=buffer_size).plan(
            lengths.copy(), seq_len
        ),
        plan,
    )


@given(lengths=LENGTHS, seq_len=SEQ_LENS, cuts=st.lists(st.integers(0, 400), max_size=5))
def test_concat_chunk_cuts_the_token_stream_into_windows(lengths, seq_len, cuts):
    lengths = np.asarray(lengths, np.int64)
    plan = ConcatChunkPacker().plan(lengths, seq_len)
    _check(lengths, seq_len, plan, "fragment", best_fit_bound=False)
    totals = np.add.reduceat(plan.seg_len, plan.sample_bounds[:-1]) if len(plan) else []
    total = int(lengths.sum())
    assert len(plan) == -(-total // seq_len)  # the lower bound: only the last window is short
    assert all(t == seq_len for t in totals[:-1]) and (
        not total or totals[-1] == total - seq_len * (len(plan) - 1)
    )
    # Documents in order, each piece starting where the previous one ended.
    assert (np.diff(plan.seg_doc) >= 0).all()
    assert _same(_in_batches(ConcatChunkPacker(), lengths, seq_len, cuts), plan)


@pytest.mark.parametrize(
    ("lengths", "seq_len", "buffer_size", "expected"),
    [
        # One open sample: each document that does not fit closes it.
        ([3, 4, 2, 5], 6, 1, [[(0, 3)], [(1, 4), (2, 2)], [(3, 5)]]),
        # Two open samples: 2 goes to the tighter fit (3 free, not 4), and the next 5 fits
        # nowhere, so the fullest sample closes first.
        ([3, 4, 2, 5, 1], 7, 2, [[(0, 3), (1, 4)], [(2, 2), (3, 5)], [(4, 1)]]),
        # Exact fits close at once; overlong documents are truncated; empty ones not placed.
        ([8, 0, 12, 3], 8, 4, [[(0, 8)], [(2, 8)], [(3, 3)]]),
        # A seq_len that is not a power of two; what is still open closes in opening order.
        ([5, 6, 2, 4], 7, 3, [[(0, 5), (2, 2)], [(1, 6)], [(3, 4)]]),
        ([], 16, 4, []),
    ],
)
def test_golden_greedy_stream(lengths, seq_len, buffer_size, expected):
    packer = GreedyStreamPacker(buffer_size=buffer_size)
    assert _samples(packer.plan(np.asarray(lengths, np.int64), seq_len)) == expected


def test_golden_concat_chunk():
    plan = ConcatChunkPacker().plan(np.asarray([5, 0, 9, 2], np.int64), 6)
    # Stream: doc 0 [0,5), doc 2 [5,14), doc 3 [14,16); windows of 6: [0,6) [6,12) [12,16).
    assert _samples(plan) == [[(0, 5), (2, 1)], [(2, 6)], [(2, 2), (3, 2)]]
    assert plan.seg_start.tolist() == [0, 0, 1, 7, 0]
    assert _samples(ConcatChunkPacker().plan(np.asarray([4, 4], np.int64), 4)) == [
        [(0, 4)],
        [(1, 4)],
    ]
    assert len(ConcatChunkPacker().plan(np.zeros(3, np.int64), 4)) == 0


def test_golden_greedy_stream_overlong():
    lengths = np.asarray([12, 3, 5], np.int64)
    fragment = GreedyStreamPacker(overlong="fragment", buffer_size=2).plan(lengths, 5)
    # Pieces (0,0,5) (0,5,5) close at once; (0,10,2) opens one, 3 joins it, 5 closes at once.
    assert _samples(fragment) == [[(0, 5)], [(0, 5)], [(0, 2), (1, 3)], [(2, 5)]]
    assert fragment.seg_start.tolist() == [0, 5, 10, 0, 0]
    drop = GreedyStreamPacker(overlong="drop").plan(lengths, 5)
    # 3 opens a sample; 5 fills one and closes at once; 3's sample closes at the end.
    assert _samples(drop) == [[(2, 5)], [(1, 3)]] and drop.dropped == 1


@pytest.mark.parametrize("packer", [GreedyStreamPacker, ConcatChunkPacker])
def test_online_packers_need_a_seq_len(packer):
    with pytest.raises(DatasetError, match="pass seq_len"):
        packer().plan(np.asarray([3]), None)


@pytest.mark.parametrize("size", [0, -1, 2.5, "8", True])
def test_buffer_size_must_be_a_positive_count(size):
    with pytest.raises(OptionError, match="greedy-stream's buffer_size must be a positive integer"):
        GreedyStreamPacker(buffer_size=size)


def test_none_packer_online_matches_its_plan():
    lengths = np.asarray([3, 0, 9, 4], np.int64)
    for overlong in POLICIES:
        packer = NonePacker(overlong=overlong)
        assert _same(_in_batches(packer, lengths, 4, [2]), packer.plan(lengths, 4))


def test_restart_is_the_packers_default_and_can_be_asked_for(tmp_path, write_jsonl):
    texts = [f"doc{i} " * (i % 17 + 1) for i in range(40)]
    gristmill.prepare(write_jsonl([{"text": t} for t in texts]), tmp_path / "ds", progress=False)
    plain = gristmill.open_dataset(tmp_path / "ds")
    stream = np.concatenate([plain[i]["input_ids"] for i in range(len(plain))])
    windows = gristmill.open_dataset(tmp_path / "ds", seq_len=64, packer="concat-chunk")
    assert not windows.restart and len(windows) == -(-len(stream) // 64)
    assert np.array_equal(np.concatenate([s["input_ids"] for s in windows]), stream)
    for sample in windows:  # nanoGPT's windows: one sequence, labels across documents
        n = len(sample["input_ids"])
        assert sample["seq_lens"].tolist() == [n]
        assert np.array_equal(sample["position_ids"], np.arange(n))
        assert np.array_equal(sample["labels"][1:], sample["input_ids"][1:])
    restarted = gristmill.open_dataset(
        tmp_path / "ds", seq_len=64, packer="concat-chunk", restart=True
    )
    for i, sample in enumerate(restarted):
        plan = restarted.plan
        segments = plan.seg_len[plan.sample_bounds[i] : plan.sample_bounds[i + 1]]
        assert sample["seq_lens"].tolist() == segments.tolist()
        starts = np.concatenate([[0], np.cumsum(segments)[:-1]])
        assert (sample["position_ids"][starts] == 0).all()
        assert (sample["labels"][starts] == -100).all()
    # And the other way: first-fit samples as one sequence each.
    joined = gristmill.open_dataset(tmp_path / "ds", seq_len=64, packer="first-fit", restart=False)
    assert all(len(s["seq_lens"]) == 1 for s in joined)


def test_shifted_windows_pair_every_position_with_the_next_token():
    ids = np.arange(10, 20, dtype=np.int64)
    mask = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], np.uint8)
    sample = build_sample([(ids[:4], mask[:4]), (ids[4:], None)], restart=False, labels="shifted")
    assert sample["input_ids"].tolist() == list(range(10, 19))
    assert sample["labels"].tolist() == [-100, 12, 13, *range(14, 20)]
    assert sample["position_ids"].tolist() == list(range(9))
    assert sample["seq_lens"].tolist() == [9]


def test_packer_options_reach_the_packer_and_the_plan_cache(tmp_path, write_jsonl):
    texts = [f"doc{i} " * (i % 37 + 1) for i in range(300)]
    gristmill.prepare(write_jsonl([{"text": t} for t in texts]), tmp_path / "ds", progress=False)
    plans = {
        size: gristmill.open_dataset(
            tmp_path / "ds",
            seq_len=128,
            packer="greedy-stream",
            packer_options={"buffer_size": size},
        ).plan
        for size in (1, 64)
    }
    assert len(plans[64]) < len(plans[1])
    assert len(list((tmp_path / "ds" / ".gristmill-plans").iterdir())) == 2
    again = gristmill.open_dataset(
        tmp_path / "ds", seq_len=128, packer="greedy-stream", packer_options={"buffer_size": 1}
    )
    assert _same(again.plan, plans[1])
    with pytest.raises(OptionError, match="buffer_size"):
        gristmill.open_dataset(
            tmp_path / "ds", seq_len=128, packer="greedy-stream", packer_options={"buffer_size": 0}
        )
