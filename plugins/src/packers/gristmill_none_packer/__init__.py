"""The ``none`` packer: one document per sample (per piece of it, with ``overlong="fragment"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.plugin.components import PackerType, PackPlan, Segment
from gristmill.plugin.overlong import check_policy, pieces


class NonePacker:
    def __init__(self, overlong: str = "truncate", **options: Any):
        self.overlong = check_policy(overlong)

    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        doc, start, length, dropped = pieces(lengths, seq_len, self.overlong)
        return PackPlan(
            sample_bounds=np.arange(len(doc) + 1, dtype=np.int64),
            seg_doc=doc,
            seg_start=start,
            seg_len=length,
            dropped=dropped,
        )

    def online(self, seq_len: int | None) -> OnePerSample:
        return OnePerSample(seq_len, self.overlong)


class OnePerSample:
    """Each document (or piece) closes its own sample (an
    :class:`~gristmill.plugin.components.OnlinePacker`)."""

    def __init__(self, seq_len: int | None, overlong: str):
        self.seq_len, self.overlong = seq_len, overlong
        self.dropped = 0

    def push(self, items: Sequence[Any], lengths: np.ndarray) -> list[list[Segment]]:
        doc, start, length, dropped = pieces(lengths, self.seq_len, self.overlong)
        self.dropped += dropped
        return [
            [(items[d], s, n)] for d, s, n in zip(doc.tolist(), start.tolist(), length.tolist())
        ]

    def flush(self) -> list[list[Segment]]:
        return []


@hookimpl
def gristmill_packers() -> list[PackerType]:
    return [
        PackerType(
            name="none",
            description="one document per sample; longer than seq_len: truncated (or as overlong says)",
            factory=NonePacker,
            cache=False,  # one arange and a copy of the lengths: cheaper than reading a file
        )
    ]
