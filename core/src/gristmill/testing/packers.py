"""Packers: a plan that places every token the ``overlong`` policy keeps exactly once (or, for a
packer the policy means nothing to, every token), in non-empty samples of at most ``seq_len``;
the same plan for the same lengths; online, the same samples however the documents arrive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from gristmill.errors import DatasetError
from gristmill.plugin.components import PackerType, PackPlan, PacksOnline
from gristmill.plugin.overlong import POLICIES, pieces
from gristmill.plugin.packing import PLAN_ARRAYS, plan_from_samples, plan_problem
from gristmill.testing.kit import Check, Context


def checks(record: PackerType) -> dict[str, Check]:
    found: dict[str, Check] = {"plan": check_plan, "deterministic": check_deterministic}
    if not isinstance(record.factory, type) or issubclass(record.factory, PacksOnline):
        found["online"] = check_online
    return found


def length_cases() -> Iterator[tuple[np.ndarray, int]]:
    """Document lengths and a ``seq_len``: none, empty documents, lengths at, over and many
    times over the limit, ``seq_len`` 1, and random mixes."""
    rng = np.random.default_rng(0)
    yield np.zeros(0, np.int64), 8
    yield np.array([0, 0, 3, 0], np.int64), 4
    yield np.array([8, 8, 1, 7, 16, 17, 0, 25, 2], np.int64), 8
    yield np.array([5, 3, 9], np.int64), 1
    yield rng.integers(0, 40, 200).astype(np.int64), 16
    yield rng.integers(1, 300, 120).astype(np.int64), 64


def _marks(lengths: np.ndarray, docs: Any, starts: Any, sizes: Any) -> np.ndarray:
    """How many times each token of the split is placed."""
    first = np.concatenate([[0], np.cumsum(lengths)])
    count = np.zeros(int(first[-1]) + 1, np.int64)
    at = first[np.asarray(docs, np.int64)] + np.asarray(starts, np.int64)
    np.add.at(count, at, 1)
    np.add.at(count, at + np.asarray(sizes, np.int64), -1)
    return np.cumsum(count)[:-1]


def _check(plan: PackPlan, lengths: np.ndarray, seq_len: int | None, policy: str) -> None:
    where = f"overlong={policy}, seq_len={seq_len}, {len(lengths)} documents"
    assert isinstance(plan, PackPlan), f"{where}: plan() returned {plan!r}"
    for name in PLAN_ARRAYS:
        assert getattr(plan, name).dtype == np.int64, f"{where}: {name} is not int64"
    problem = plan_problem(plan, lengths, seq_len)
    assert problem is None, f"{where}: {problem}"
    placed = _marks(lengths, plan.seg_doc, plan.seg_start, plan.seg_len)
    kept = pieces(lengths, seq_len, policy)
    every = np.ones(int(lengths.sum()), np.int64)
    if np.array_equal(placed, _marks(lengths, kept.doc, kept.start, kept.length)):
        assert plan.dropped == kept.dropped, f"{where}: dropped {plan.dropped}, not {kept.dropped}"
    else:  # a packer that ignores the policy (concat-chunk: nothing is overlong) places all
        assert np.array_equal(placed, every), f"{where}: tokens placed twice, or left out"
        assert plan.dropped == 0, f"{where}: every token placed, yet {plan.dropped} dropped"


def check_plan(record: PackerType, context: Context) -> None:
    for policy in POLICIES:
        packer = record.factory(overlong=policy)
        for lengths, seq_len in length_cases():
            _check(packer.plan(lengths, seq_len), lengths, seq_len, policy)
    lengths = np.array([3, 0, 500, 2], np.int64)
    try:
        plan = record.factory(overlong="truncate").plan(lengths, None)
    except DatasetError:
        return  # a packer that fills samples of seq_len tokens asks for one: allowed
    _check(plan, lengths, None, "truncate")


def _same(a: PackPlan, b: PackPlan) -> bool:
    return a.dropped == b.dropped and all(
        np.array_equal(getattr(a, name), getattr(b, name)) for name in PLAN_ARRAYS
    )


def check_deterministic(record: PackerType, context: Context) -> None:
    for policy in POLICIES:
        for lengths, seq_len in length_cases():
            first = record.factory(overlong=policy).plan(lengths, seq_len)
            again = record.factory(overlong=policy).plan(lengths.copy(), seq_len)
            assert _same(first, again), f"overlong={policy}, seq_len={seq_len}: two plans"


def _online(packer: Any, lengths: np.ndarray, seq_len: int, chunk: int) -> PackPlan:
    online = packer.online(seq_len)
    samples = []
    for lo in range(0, len(lengths), chunk):
        hi = min(lo + chunk, len(lengths))
        samples += online.push(list(range(lo, hi)), lengths[lo:hi])
    samples += online.flush()
    return plan_from_samples(samples, online.dropped)


def check_online(record: PackerType, context: Context) -> None:
    if not isinstance(record.factory(), PacksOnline):
        pytest.skip(f"packer {record.name!r} offers no online(): stream() refuses it")
    for policy in POLICIES:
        packer = record.factory(overlong=policy)
        for lengths, seq_len in length_cases():
            where = f"overlong={policy}, seq_len={seq_len}"
            whole = _online(packer, lengths, seq_len, max(len(lengths), 1))
            for chunk in (1, 7):
                chunked = _online(packer, lengths, seq_len, chunk)
                assert _same(chunked, whole), f"{where}: samples depend on how documents arrive"
            assert _same(whole, packer.plan(lengths, seq_len)), (
                f"{where}: online samples differ from plan()'s (stream() and open_dataset "
                "must serve the same samples)"
            )
