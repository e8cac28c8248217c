"""Building blocks for packer plugins: a best-fit index of open samples, and plans from online
packers (so a packer written once for ``stream()`` serves ``open_dataset`` too)."""

from __future__ import annotations

import bisect
from itertools import chain

import numpy as np

from gristmill.plugin.components import OnlinePacker, PackPlan, Segment


class FreeSpace:
    """Open samples by free space, for best fit: each lookup is a binary search.

    The free amounts some open sample has are kept sorted, with a stack of samples per amount,
    so taking the tightest fit costs O(log n) in C-level list operations, however many samples
    are open. Among samples with equal space the one put last is taken first.
    """

    def __init__(self) -> None:
        self._amounts: list[int] = []  # sorted, distinct
        self._samples: dict[int, list[int]] = {}  # free space → samples with exactly that

    def put(self, sample: int, free: int) -> None:
        stack = self._samples.get(free)
        if stack is None:
            self._samples[free] = stack = []
            bisect.insort(self._amounts, free)
        stack.append(sample)

    def take(self, size: int) -> tuple[int, int] | None:
        """Remove and return ``(sample, free)`` with the least free space ≥ ``size``, if any
        (``size`` 0: the fullest open sample)."""
        amounts = self._amounts
        at = bisect.bisect_left(amounts, size)
        if at == len(amounts):
            return None
        free = amounts[at]
        stack = self._samples[free]
        sample = stack.pop()
        if not stack:
            del self._samples[free], amounts[at]
        return sample, free


def plan_from_samples(samples: list[list[Segment]], dropped: int = 0) -> PackPlan:
    """A plan from samples given as lists of ``(document index, start, length)``."""
    bounds = np.zeros(len(samples) + 1, np.int64)
    np.cumsum([len(s) for s in samples], out=bounds[1:])
    flat = np.array(list(chain.from_iterable(samples)), np.int64).reshape(-1, 3)
    return PackPlan(
        sample_bounds=bounds,
        seg_doc=flat[:, 0].copy(),
        seg_start=flat[:, 1].copy(),
        seg_len=flat[:, 2].copy(),
        dropped=dropped,
    )


def plan_online(online: OnlinePacker, lengths: np.ndarray) -> PackPlan:
    """The plan an online packer makes when the documents arrive in order, all at once."""
    lengths = np.asarray(lengths, np.int64)
    samples = online.push(range(len(lengths)), lengths) + online.flush()
    return plan_from_samples(samples, online.dropped)


PLAN_ARRAYS = ("sample_bounds", "seg_doc", "seg_start", "seg_len")


def plan_problem(plan: PackPlan, lengths: np.ndarray, seq_len: int | None) -> str | None:
    """What makes ``plan`` unfit to serve documents of ``lengths`` in samples of at most
    ``seq_len`` tokens, or ``None``: a few vectorised checks of its shapes and ranges, so that
    a plan read back from a file never indexes past a document or a sample."""
    for name in PLAN_ARRAYS:
        array = getattr(plan, name)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            return f"{name} is not a list of integers ({array.dtype}, {array.ndim}-D)"
    bounds, docs, starts, sizes = (getattr(plan, name).astype(np.int64) for name in PLAN_ARRAYS)
    if not len(docs) == len(starts) == len(sizes):
        return f"segment arrays of different lengths ({len(docs)}, {len(starts)}, {len(sizes)})"
    if not len(bounds) or bounds[0] != 0 or bounds[-1] != len(docs) or (np.diff(bounds) < 1).any():
        return "sample bounds do not cut the segments into non-empty samples"
    if len(docs) and (docs.min() < 0 or docs.max() >= len(lengths)):
        return f"a segment names a document outside the {len(lengths)} documents of the split"
    if len(docs) and (
        starts.min() < 0 or sizes.min() < 1 or (starts + sizes > lengths[docs]).any()
    ):
        return "a segment reaches past the end of its document"
    if seq_len is not None and len(docs) and np.add.reduceat(sizes, bounds[:-1]).max() > seq_len:
        return f"a sample holds more than seq_len={seq_len} tokens"
    if plan.dropped < 0:
        return f"dropped is {plan.dropped}"
    return None


def keep_samples(plan: PackPlan, keep: np.ndarray) -> PackPlan:
    """The plan of the samples where ``keep`` (bool per sample) is set, in order."""
    sizes = np.diff(plan.sample_bounds)
    segments = np.repeat(keep, sizes)
    bounds = np.zeros(int(keep.sum()) + 1, np.int64)
    np.cumsum(sizes[keep], out=bounds[1:])
    return PackPlan(
        sample_bounds=bounds,
        seg_doc=plan.seg_doc[segments],
        seg_start=plan.seg_start[segments],
        seg_len=plan.seg_len[segments],
        dropped=plan.dropped,
    )
