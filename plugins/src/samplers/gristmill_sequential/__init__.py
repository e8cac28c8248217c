"""The ``sequential`` sampler: every sample once, in index order, every epoch.

For evaluation: on several ranks, global batch ``s`` holds samples ``s·G`` to ``(s+1)·G - 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.plugin.components import SamplerType


class Sequential:
    def __init__(self, num_samples: int, *, seed: int = 0, **context: Any):
        self.num_samples = num_samples

    def order(self, epoch: int) -> np.ndarray:
        return np.arange(self.num_samples, dtype=np.int64)


@hookimpl
def gristmill_samplers() -> list[SamplerType]:
    return [
        SamplerType(
            name="sequential",
            description="every sample once, in index order (evaluation)",
            factory=Sequential,
        )
    ]
