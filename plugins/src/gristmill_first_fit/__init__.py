"""The ``first-fit`` packer: global best-fit-decreasing over every document of a split.

Documents are taken longest first (ties in document order) and each goes into the open sample
whose free space is the smallest that still holds it, or a new sample when none does. The plan
is computed from the document lengths alone. Free space is tracked per amount (a sorted list of
the amounts some open sample has, and a stack of samples per amount), so each document costs a
binary search and a few list operations in C: no per-token work, memory proportional to the
number of documents. A document longer than ``seq_len`` is truncated, cut into pieces or dropped
(``overlong``, see :mod:`gristmill.overlong`); a piece is placed like a document.

Samples come out in the order they were opened (the first hold the longest documents); within a
sample, segments are in the order they were placed. The same lengths give the same plan.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.components import PackerType, PackPlan
from gristmill.errors import DatasetError
from gristmill.overlong import check_policy, pieces


class FirstFitPacker:
    def __init__(self, overlong: str = "truncate", **options: Any):
        self.overlong = check_policy(overlong)

    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        if seq_len is None:
            raise DatasetError("the first-fit packer fills samples of seq_len tokens: pass seq_len")
        doc, start, length, dropped = pieces(lengths, seq_len, self.overlong)
        # Longest first; equal lengths keep document (and piece) order: lexsort is stable.
        order = np.lexsort((np.arange(len(doc)), -length))
        sample_of = np.empty(len(order), np.int64)
        free_amounts: list[int] = []  # sorted: the free space of some open sample
        samples_with: dict[int, list[int]] = {}  # free space → open samples with exactly that
        opened = 0
        for k, size in enumerate(length[order].tolist()):
            at = bisect.bisect_left(free_amounts, size)
            if at == len(free_amounts):  # no open sample has room: open one
                sample, free = opened, seq_len - size
                opened += 1
            else:
                fits = free_amounts[at]
                stack = samples_with[fits]
                sample = stack.pop()
                if not stack:
                    del samples_with[fits], free_amounts[at]
                free = fits - size
            sample_of[k] = sample
            if free:  # a full sample takes no more documents
                stack = samples_with.get(free)
                if stack is None:
                    samples_with[free] = stack = []
                    bisect.insort(free_amounts, free)
                stack.append(sample)
        # Segments grouped by sample, in placement order within each (a stable sort).
        placed = order[np.argsort(sample_of, kind="stable")]
        bounds = np.zeros(opened + 1, np.int64)
        np.cumsum(np.bincount(sample_of, minlength=opened), out=bounds[1:])
        return PackPlan(
            sample_bounds=bounds,
            seg_doc=doc[placed],
            seg_start=start[placed],
            seg_len=length[placed],
            dropped=dropped,
        )


@hookimpl
def gristmill_packers() -> list[PackerType]:
    return [
        PackerType(
            name="first-fit",
            description="global best-fit-decreasing: documents into the fullest sample that "
            "holds them, longest first",
            factory=FirstFitPacker,
        )
    ]
