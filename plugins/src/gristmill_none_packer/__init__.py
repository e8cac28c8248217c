"""The ``none`` packer: one document per sample (per piece of it, with ``overlong="fragment"``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.components import PackerType, PackPlan
from gristmill.overlong import check_policy, pieces


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
