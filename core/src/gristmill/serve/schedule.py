"""An epoch's order cut into global batches and rank slices, the same way for every sampler.

A sampler plugin only orders the samples of an epoch. This module turns that order into what
each rank serves, so that every sampler keeps the invariants:

- **exact cover**: every sample once per epoch; without ``drop_last`` the order is padded to a
  multiple of ``world_size`` by repeating its first samples (fewer than ``world_size``, each
  marked as a repeat), with ``drop_last`` only whole global batches are served;
- **equal steps**: step ``s`` is global batch ``s``, positions ``[s·G, (s+1)·G)`` of the padded
  order (``G = world_size × batch_size``; the last one may be shorter but still a multiple of
  ``world_size``), and every rank takes an equal, contiguous share of it;
- **resume, also elastic**: the position after ``s`` steps is ``s·G`` whatever the world size,
  so a run resumed on another number of ranks with the same ``G`` serves the same global
  batches from there on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gristmill.plugin.arguments import check_int


@dataclass(frozen=True)
class Schedule:
    """One epoch's global batches: ``order`` is the sampler's order of sample indices."""

    order: np.ndarray
    world_size: int
    batch_size: int
    drop_last: bool = False

    def __post_init__(self) -> None:
        for name in ("world_size", "batch_size"):
            check_int(name, getattr(self, name))

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    @property
    def served(self) -> int:
        """Positions served in the epoch, repeats included."""
        n = len(self.order)
        if self.drop_last:
            return n - n % self.global_batch
        return -(-n // self.world_size) * self.world_size

    @property
    def steps(self) -> int:
        return -(-self.served // self.global_batch)

    def batch(self, step: int, rank: int) -> list[tuple[int, bool]]:
        """Rank ``rank``'s share of global batch ``step``: ``(sample index, is a repeat)``."""
        indices, repeats, _ = self.shares(range(step, step + 1), rank)
        return list(zip(indices.tolist(), repeats.tolist()))

    def everyone(self, steps: range) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Global batches ``steps`` (consecutive) on every rank, in one go: their sample
        indices and whether each is a repeat, step by step and rank by rank (each rank's share
        as :meth:`shares` gives it), and how many samples each step gives a rank."""
        size = self.global_batch
        lo, hi = steps.start * size, min(steps.stop * size, self.served)
        counts = [(min(at + size, hi) - at) // self.world_size for at in range(lo, hi, size)]
        positions = np.arange(lo, hi)
        n = len(self.order)
        return (self.order[positions % n] if n else positions), positions >= n, counts

    def shares(self, steps: range, rank: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Rank ``rank``'s shares of global batches ``steps`` (consecutive), in one go: their
        sample indices concatenated, whether each is a repeat, and how many each step has."""
        size, served = self.global_batch, self.served
        begins = [step * size for step in steps]
        counts = [(min(lo + size, served) - lo) // self.world_size for lo in begins]
        # Step s's share: positions lo + rank · count + 0, 1, … count - 1.
        per_step = np.array(counts, np.int64)
        firsts = np.array(begins, np.int64) + rank * per_step - (per_step.cumsum() - per_step)
        positions = np.arange(sum(counts)) + np.repeat(firsts, per_step)
        n = len(self.order)
        indices = self.order[positions % n] if n else positions
        return indices, positions >= n, counts
