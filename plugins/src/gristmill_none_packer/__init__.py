"""The ``none`` packer: one document per sample, truncated to ``seq_len`` when one is given."""

from __future__ import annotations

import numpy as np

from gristmill import hookimpl
from gristmill.components import PackerType, PackPlan


class NonePacker:
    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        n = len(lengths)
        kept = np.asarray(lengths, np.int64)
        if seq_len is not None:
            kept = np.minimum(kept, seq_len)
        return PackPlan(
            sample_bounds=np.arange(n + 1, dtype=np.int64),
            seg_doc=np.arange(n, dtype=np.int64),
            seg_start=np.zeros(n, dtype=np.int64),
            seg_len=kept,
        )


@hookimpl
def gristmill_packers() -> list[PackerType]:
    return [
        PackerType(
            name="none",
            description="one document per sample, truncated to seq_len",
            factory=NonePacker,
        )
    ]
