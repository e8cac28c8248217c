"""The ``random`` sampler, also registered as ``distributed``: a new permutation every epoch.

The permutation depends on ``(seed, epoch)`` only, so every rank computes the same one and
takes its share (:mod:`gristmill.serve.schedule`). ``distributed`` is the name PyTorch users look
for (``DistributedSampler``); like it, it takes ``shuffle=False`` for index order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.plugin.components import SamplerType


class Shuffled:
    def __init__(self, num_samples: int, *, seed: int = 0, shuffle: bool = True, **context: Any):
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        return rng.permutation(self.num_samples).astype(np.int64)


@hookimpl
def gristmill_samplers() -> list[SamplerType]:
    return [
        SamplerType(
            name=name,
            description=f"a new permutation every epoch from (seed, epoch){note}",
            factory=Shuffled,
            options={"shuffle": "false: index order every epoch (default true)"},
        )
        for name, note in (("random", ""), ("distributed", "; shuffle=False for index order"))
    ]
