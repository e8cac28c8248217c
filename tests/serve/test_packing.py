"""The first-fit packer: every document once, no sample over seq_len, close to the bound."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DatasetError
from gristmill.layout import PLANS_DIR
from gristmill.plugin.overlong import POLICIES
from gristmill_first_fit import FirstFitPacker
from gristmill_none_packer import NonePacker
from tests.helpers import run_gristmill

SEQ_LENS = st.one_of(st.sampled_from([1, 2, 8, 64, 2048]), st.integers(1, 3000))


def _check(
    lengths: np.ndarray,
    seq_len: int,
    plan,
    overlong: str = "truncate",
    best_fit_bound: bool = True,
) -> None:
    long = lengths > seq_len
    # Every token the policy keeps, in exactly one segment: pieces of a document tile it.
    kept = {
        "truncate": np.minimum(lengths, seq_len),
        "truncate-left": np.minimum(lengths, seq_len),
        "fragment": lengths,
        "drop": np.where(long, 0, lengths),
    }[overlong]
    assert plan.dropped == (int((long & (lengths > 0)).sum()) if overlong == "drop" else 0)
    order = np.lexsort((plan.seg_start, plan.seg_doc))
    docs, starts, lens = plan.seg_doc[order], plan.seg_start[order], plan.seg_len[order]
    # Where each document's kept tokens begin: at its end minus what is kept for truncate-left.
    first = lengths - kept if overlong == "truncate-left" else np.zeros(len(lengths), np.int64)
    covered = first.copy()
    for doc, start, length in zip(docs.tolist(), starts.tolist(), lens.tolist()):
        assert start == covered[doc] and 0 < length <= seq_len
        covered[doc] += length
    assert np.array_equal(covered - first, kept)
    bounds = plan.sample_bounds
    assert bounds[0] == 0 and bounds[-1] == len(plan.seg_doc)
    assert (np.diff(bounds) > 0).all()  # no empty sample
    totals = np.add.reduceat(plan.seg_len, bounds[:-1]) if len(plan) else np.zeros(0)
    assert (totals <= seq_len).all()
    lower = _lower_bound(plan.seg_len, seq_len)
    assert lower <= len(plan)
    if best_fit_bound:  # best-fit-decreasing uses at most 11/9 of the optimum plus one sample
        assert len(plan) <= 11 * lower // 9 + 1


def _lower_bound(items: np.ndarray, capacity: int) -> int:
    """Martello and Toth's L2 lower bound on the samples any packing of ``items`` needs.

    The token count alone (``ceil(sum / capacity)``) can be far below the optimum: four items
    of 592 and one of 298 at 889 need 5 samples, not 3, since no two of them fit together.
    L2 also counts the items over half the capacity, each alone in its sample.
    """
    items = np.asarray(items, np.int64)
    best = -(-int(items.sum()) // capacity)
    for alpha in {0, *items[2 * items <= capacity].tolist()}:
        big = items[items > capacity - alpha]
        mid = items[(items <= capacity - alpha) & (2 * items > capacity)]
        small = items[(2 * items <= capacity) & (items >= alpha)]
        room = len(mid) * capacity - int(mid.sum())
        best = max(best, len(big) + len(mid) + max(0, -(-(int(small.sum()) - room) // capacity)))
    return best


@given(
    lengths=st.lists(st.integers(0, 5000), max_size=300),
    seq_len=SEQ_LENS,
    overlong=st.sampled_from(POLICIES),
)
def test_every_token_once_and_no_sample_over_seq_len(lengths, seq_len, overlong):
    lengths = np.asarray(lengths, np.int64)
    plan = FirstFitPacker(overlong=overlong).plan(lengths, seq_len)
    _check(lengths, seq_len, plan, overlong)
    again = FirstFitPacker(overlong=overlong).plan(lengths.copy(), seq_len)
    assert all(np.array_equal(a, b) for a, b in zip(vars(plan).values(), vars(again).values()))
    # The none packer: the same pieces, one per sample, in document order.
    single = NonePacker(overlong=overlong).plan(lengths, seq_len)
    assert np.array_equal(single.sample_bounds, np.arange(len(single.seg_doc) + 1))
    assert (np.diff(single.seg_doc) >= 0).all() and single.dropped == plan.dropped
    assert sorted(zip(single.seg_doc.tolist(), single.seg_start.tolist())) == sorted(
        zip(plan.seg_doc.tolist(), plan.seg_start.tolist())
    )


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


def test_golden_overlong_policies():
    lengths = np.asarray([12, 3, 5], np.int64)
    fragment = FirstFitPacker(overlong="fragment").plan(lengths, 5)
    # Pieces (doc, start, length): (0,0,5) (0,5,5) (0,10,2) (1,0,3) (2,0,5).
    assert _samples(fragment) == [[(0, 5)], [(0, 5)], [(2, 5)], [(1, 3), (0, 2)]]
    assert fragment.seg_start.tolist() == [0, 5, 0, 0, 10]
    drop = FirstFitPacker(overlong="drop").plan(lengths, 5)
    assert _samples(drop) == [[(2, 5)], [(1, 3)]] and drop.dropped == 1
    left = FirstFitPacker(overlong="truncate-left").plan(lengths, 5)
    assert _samples(left) == [[(0, 5)], [(2, 5)], [(1, 3)]]
    assert left.seg_start.tolist() == [7, 0, 0]  # the last 5 of document 0's 12 tokens
    with pytest.raises(
        DatasetError, match="overlong must be one of truncate, truncate-left, fragment, drop"
    ):
        FirstFitPacker(overlong="split")


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


def test_overlong_policies_through_open_dataset(tmp_path, write_jsonl):
    texts = [f"document {i} " * (i % 40 + 1) for i in range(120)]
    gristmill.prepare(write_jsonl([{"text": t} for t in texts]), tmp_path / "ds", progress=False)
    total = gristmill.open_dataset(tmp_path / "ds").manifest["splits"]["train"]["num_tokens"]
    served = {}
    for overlong in POLICIES:
        ds = gristmill.open_dataset(
            tmp_path / "ds", seq_len=100, packer="first-fit", overlong=overlong
        )
        assert pickle.loads(pickle.dumps(ds)).overlong == overlong
        served[overlong] = sum(len(sample["input_ids"]) for sample in ds)
        assert all(len(sample["input_ids"]) <= 100 for sample in ds)
    lengths = gristmill.open_dataset(tmp_path / "ds").documents.lengths()
    assert served["fragment"] == total  # every token, in pieces
    assert served["truncate"] == served["truncate-left"] == np.minimum(lengths, 100).sum()
    assert served["drop"] == lengths[lengths <= 100].sum()
    dropped = gristmill.open_dataset(tmp_path / "ds", seq_len=100, overlong="drop").plan.dropped
    assert dropped == int((lengths > 100).sum()) > 0


def test_inspect_reports_packing_efficiency_per_packer(tmp_path, write_jsonl):
    texts = [f"document {i} " * (i % 40 + 1) for i in range(120)]
    gristmill.prepare(write_jsonl([{"text": t} for t in texts]), tmp_path / "ds", progress=False)
    lengths = gristmill.open_dataset(tmp_path / "ds").documents.lengths()
    result = run_gristmill("inspect", str(tmp_path / "ds"), "--json", "--seq-len", "100,256")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["splits"]["train"]["packing"]
    by = {(r["packer"], r["seq_len"]): r for r in rows}
    packers = ("concat-chunk", "first-fit", "greedy-stream", "none", "window")
    assert set(by) == {(p, n) for p in packers for n in (100, 256)}
    total = int(lengths.sum())
    for (packer, seq_len), row in by.items():
        served = total if packer == "concat-chunk" else np.minimum(lengths, seq_len).sum()
        assert row["efficiency"] == round(served / (row["samples"] * seq_len), 4)
        assert row["overlong_documents"] == (lengths > seq_len).sum()
        assert row["tokens_left_out"] == total - served and row["overlong"] == "truncate"
    assert by[("none", 100)]["samples"] == len(lengths)
    assert by[("concat-chunk", 100)]["samples"] == -(-total // 100)
    assert by[("first-fit", 256)]["efficiency"] > 0.95 > by[("none", 256)]["efficiency"]
    assert by[("greedy-stream", 256)]["efficiency"] > by[("none", 256)]["efficiency"]
    # Another overlong policy: drops counted, or nothing left out with fragments.
    for policy in ("drop", "fragment"):
        text = run_gristmill(
            "inspect", str(tmp_path / "ds"), "--seq-len", "100", "--overlong", policy
        )
        assert text.returncode == 0, text.stderr
        line = next(ln for ln in text.stdout.splitlines() if "packing first-fit @ 100:" in ln)
        long = int((lengths > 100).sum())
        if policy == "drop":
            left = int(lengths[lengths > 100].sum())
            assert (
                f"{long:,} documents longer, {left:,} tokens left out, {long:,} documents "
                "(overlong=drop)" in line
            )
        else:
            assert line.endswith(f"{long:,} documents longer, nothing left out")
    bad = run_gristmill("inspect", str(tmp_path / "ds"), "--seq-len", "0")
    assert bad.returncode == 2 and "--seq-len takes positive numbers" in bad.stderr
    # A reader that stops early (| head) ends the command quietly.
    piped = subprocess.run(
        f"{sys.executable} -m gristmill.cli inspect {tmp_path / 'ds'} --decode 50 | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert piped.stdout.startswith(str(tmp_path / "ds")) and "Traceback" not in piped.stderr


def _plan_in_process(args: tuple[str, int]) -> list[list[int]]:
    ds = gristmill.open_dataset(args[0], seq_len=args[1], packer="first-fit")
    return [ds.plan.sample_bounds.tolist(), ds.plan.seg_doc.tolist()]


def test_plans_are_cached_beside_the_shards_and_shared_by_processes(tmp_path, write_jsonl):
    texts = [f"document {i} " * (i % 40 + 1) for i in range(500)]
    out = tmp_path / "ds"
    gristmill.prepare(write_jsonl([{"text": t} for t in texts]), out, progress=False)
    # Four processes open the dataset at once: one plan file, whole, and the same plan for all.
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        plans = pool.map(_plan_in_process, [(str(out), 128)] * 4)
    assert all(plan == plans[0] for plan in plans)
    (cached,) = (out / PLANS_DIR).iterdir()
    assert cached.suffix == ".npz"
    assert _plan_in_process((str(out), 128)) == plans[0]  # read back from the file
    # Another seq_len is another plan; the none packer is never cached.
    gristmill.open_dataset(out, seq_len=64, packer="first-fit")
    gristmill.open_dataset(out, seq_len=64)
    assert len(list((out / PLANS_DIR).iterdir())) == 2
    # A damaged cache file is computed again and replaced.
    cached.write_bytes(b"not a plan")
    assert _plan_in_process((str(out), 128)) == plans[0]
    assert cached.read_bytes()[:2] == b"PK"


def test_shifted_labels_pair_each_position_with_its_next_token(tmp_path, write_jsonl):
    records = [{"prompt": f"q{i} " * (i % 9 + 1), "completion": f"a{i}"} for i in range(60)]
    records += [{"text": f"doc{i} " * (i % 13 + 1)} for i in range(60)]
    src = [write_jsonl(records[:60], "p.jsonl"), write_jsonl(records[60:], "t.jsonl")]
    gristmill.prepare(src, tmp_path / "ds", progress=False)
    options = dict(seq_len=129, packer="first-fit")
    plain = gristmill.open_dataset(tmp_path / "ds", **options)
    shifted = gristmill.open_dataset(tmp_path / "ds", labels="shifted", **options)
    assert pickle.loads(pickle.dumps(shifted)).labels == "shifted"
    for i in range(len(plain)):
        u, s = plain[i], shifted[i]
        assert np.array_equal(s["input_ids"], u["input_ids"][:-1])
        assert np.array_equal(s["labels"], u["labels"][1:])
        assert np.array_equal(s["position_ids"], u["position_ids"][:-1])
        assert s["seq_lens"].sum() == len(s["input_ids"]) <= 128
        # No target is the first token of another document.
        next_starts = np.cumsum(u["seq_lens"])[:-1] - 1
        assert (s["labels"][next_starts] == -100).all()
    with pytest.raises(DatasetError, match="labels must be one of unshifted, shifted"):
        gristmill.open_dataset(tmp_path / "ds", labels="next")
