"""The ``distributed-length-grouped`` sampler: global batches of samples of similar length.

Each epoch the samples are shuffled, cut into megabatches of ``megabatch`` global batches, and
each megabatch is sorted by length, longest first, and cut into global batches. So the samples
of a step have similar token counts: ranks finish a step at about the same time, and padded
batches carry little padding. The global batches are then shuffled, except that the one
holding the longest sample comes first (a run that would run out of memory does so at once)
and a short last batch stays last. Everything depends on ``(seed, epoch)`` only.

Trade-offs: batches are less random than with ``random`` (a step's samples share a length
range), and a larger ``megabatch`` groups more tightly but mixes less. Packed samples are all
close to ``seq_len`` already; grouping matters for unpacked data (the ``none`` packer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import GristmillError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.components import SamplerType

DEFAULT_MEGABATCH = 50  # global batches sorted together


class LengthGrouped:
    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        lengths: np.ndarray | None = None,
        global_batch: int = 1,
        megabatch: int = DEFAULT_MEGABATCH,
        **context: Any,
    ):
        if lengths is None or len(lengths) != num_samples:
            raise GristmillError(
                "the distributed-length-grouped sampler needs every sample's length"
            )
        self.lengths = np.asarray(lengths, np.int64)
        self.seed, self.global_batch = seed, global_batch
        self.megabatch = check_int("megabatch", megabatch)

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        shuffled = rng.permutation(len(self.lengths))
        size = self.megabatch * self.global_batch
        batches: list[np.ndarray] = []
        for lo in range(0, len(shuffled), size):
            chunk = shuffled[lo : lo + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.global_batch] for i in range(0, len(chunk), self.global_batch)
            ]
        if not batches:
            return np.zeros(0, np.int64)
        # Only the very last batch can be short; it stays last so steps keep their boundaries.
        short = [batches.pop()] if len(batches[-1]) < self.global_batch else []
        if batches:
            first = max(range(len(batches)), key=lambda i: self.lengths[batches[i][0]])
            rest = [batches[i] for i in rng.permutation(len(batches)) if i != first]
            batches = [batches[first], *rest]
        return np.concatenate(batches + short).astype(np.int64)


@hookimpl
def gristmill_samplers() -> list[SamplerType]:
    return [
        SamplerType(
            name="distributed-length-grouped",
            description="shuffled global batches of samples of similar length, longest first "
            "(option megabatch, default 50 global batches)",
            factory=LengthGrouped,
            options={
                "megabatch": f"global batches sorted by length together (default "
                f"{DEFAULT_MEGABATCH}): larger groups tighter, mixes less"
            },
        )
    ]
