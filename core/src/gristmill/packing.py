"""Building blocks for packer plugins: a best-fit index of open samples, and plans from online
packers (so a packer written once for ``stream()`` serves ``open_dataset`` too)."""

from __future__ import annotations

import bisect
from itertools import chain

import numpy as np

from gristmill.components import OnlinePacker, PackPlan, Segment


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
