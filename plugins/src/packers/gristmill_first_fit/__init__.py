"""The ``first-fit`` packer: global best-fit-decreasing over every document of a split.

Documents are taken longest first (ties in document order) and each goes into the open sample
whose free space is the smallest that still holds it, or a new sample when none does. The plan
is computed from the document lengths alone. Open samples are indexed by free space
(:class:`gristmill.plugin.packing.FreeSpace`), so each document costs a binary search and a few list
operations in C: no per-token work, memory proportional to the number of documents. A document
longer than ``seq_len`` is truncated, cut into pieces or dropped (``overlong``, see
:mod:`gristmill.plugin.overlong`); a piece is placed like a document.

Samples come out in the order they were opened (the first hold the longest documents); within a
sample, segments are in the order they were placed. The same lengths give the same plan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import DatasetError
from gristmill.plugin.components import PackerType, PackPlan
from gristmill.plugin.overlong import check_policy, pieces
from gristmill.plugin.packing import FreeSpace


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
        space = FreeSpace()
        opened = 0
        for k, size in enumerate(length[order].tolist()):
            found = space.take(size)
            if found is None:  # no open sample has room: open one
                sample, free = opened, seq_len
                opened += 1
            else:
                sample, free = found
            sample_of[k] = sample
            if free > size:  # a full sample takes no more documents
                space.put(sample, free - size)
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
