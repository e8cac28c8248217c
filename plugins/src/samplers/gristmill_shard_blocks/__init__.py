"""The ``shard-blocks`` sampler: shuffled, but reading few shards at a time.

A fully shuffled epoch (``distributed``) reads every shard all through the epoch, so a node
whose cache holds less than the dataset downloads each shard again and again. This sampler
visits the shards in a shuffled order of blocks of ``window`` consecutive shards (the shards of
a block one after the other: a sample running past its shard's end reads the next shard, which
is then read soon after, not at a random later turn) and spreads each shard's samples,
shuffled, over a span of ``window`` shards' turns: shard number ``k`` of the visit has its samples at keys drawn
uniformly in ``[k, k + window)`` (in shard units), and the epoch is the samples sorted by key.
So at any point of the order at most ``window`` shards have been started and not finished: a
cache of about ``window`` shards per node (plus what is fetched ahead) downloads each shard
once an epoch, and a new shard starts about every shard's worth of samples, never all at once.

``partitions=P`` (MosaicML streaming's canonical nodes) splits the shards into ``P`` groups,
the same for the whole run: the samples listed shard after shard, in the shards' order, cut
into ``P`` consecutive spans of equal size (so a shard at a cut is shared by two groups).
Consecutive shards, because a sample that runs past its shard's end (a window of the token
stream) reads the next shard too, which is then in its own group but at a cut. Each global batch is cut into ``P`` equal contiguous parts, part ``p`` taken
from group ``p``. Ranks take contiguous shares of a global batch
(:mod:`gristmill.serve.schedule`), so with ``P`` nodes of equal rank counts (or a number of
nodes dividing ``P``) each node reads its own groups' shards alone, and a node whose cache
holds its groups downloads each shard once in the whole run. The groups' sizes are a whole
number of parts each, plus an equal share of the remainder: the last, short step (fewer
samples than a global batch) takes what is left of every group, group after group, and is
the only one where a node can read a neighbour's shards.

The order depends on ``(seed, epoch)`` and the options only, never on the number of ranks, so
exact cover, equal steps and elastic resume with the same global batch hold as for any sampler.
Trade-off: a step's samples come from about ``window`` shards (per group) rather than from the
whole dataset; a larger window mixes more and needs a larger cache.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import GristmillError, OptionError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.components import SamplerType

DEFAULT_WINDOW = 8  # shards read at once (per group), and visited one after the other
# Key units per shard: keys are integers, so that a shard's samples all come before those of
# the shard ``window`` turns later, exactly.
UNIT = 1 << 20
EPOCHS = 1  # the stream of random numbers of each epoch's order


class ShardBlocks:
    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        shards: np.ndarray | None = None,
        global_batch: int = 1,
        window: int = DEFAULT_WINDOW,
        partitions: int = 1,
        shuffle: bool = True,
        **context: Any,
    ):
        if shards is None:
            raise GristmillError(
                "the shard-blocks sampler needs the shard of every sample, and this dataset "
                "cannot say which shard holds a sample (a mixture of datasets, or a shard format "
                "without shards_of): use the distributed sampler instead"
            )
        shards = np.asarray(shards, np.int64)
        if shards.shape != (num_samples,):
            raise GristmillError(
                f"shard-blocks: {len(shards)} shards given for {num_samples} samples"
            )
        self.seed, self.window = seed, check_int("window", window)
        self.partitions = check_int("partitions", partitions)
        if not isinstance(shuffle, bool | np.bool_):
            raise OptionError(f"shuffle must be true or false, got {shuffle!r}")
        self.shuffle = bool(shuffle)
        if global_batch % self.partitions:
            raise OptionError(
                f"partitions={self.partitions} must divide the global batch ({global_batch} "
                "samples a step): each step takes an equal part from every group of shards"
            )
        self.part = global_batch // self.partitions
        ids, dense = np.unique(shards, return_inverse=True)
        sizes = _sizes(num_samples, global_batch, self.partitions)
        members, self.samples, self._local = _groups(dense, sizes)
        # ``samples``: each group's samples; ``groups``: its shards, as the dataset numbers them.
        self.groups = [ids[m] for m in members]

    def order(self, epoch: int) -> np.ndarray:
        rng = _rng([self.seed, epoch], EPOCHS)
        sequences = [
            self._sequence(samples, local, rng) for samples, local in zip(self.samples, self._local)
        ]
        return _interleave(sequences, self.part)

    def _sequence(self, samples: np.ndarray, local: np.ndarray, rng: Any) -> np.ndarray:
        """One group's samples in this epoch's order."""
        if not self.shuffle or not len(samples):
            return samples
        # Each shard's turn in the visit: blocks of ``window`` consecutive shards in a shuffled
        # order, the shards of a block one after the other.
        blocks = rng.permutation(int(local.max()) // self.window + 1)
        turn = blocks[local // self.window] * self.window + local % self.window
        keys = turn * UNIT + rng.integers(0, self.window * UNIT, len(samples))
        return samples[np.argsort(keys, kind="stable")]


def _rng(entropy: Any, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(stream,)))


def _sizes(num_samples: int, global_batch: int, partitions: int) -> np.ndarray:
    """Samples in each group: as many whole parts of a global batch as there are whole global
    batches, and an equal share of the rest (the first groups one more where it does not
    divide)."""
    steps, rest = divmod(num_samples, global_batch)
    extra = rest // partitions + (np.arange(partitions) < rest % partitions)
    return steps * (global_batch // partitions) + extra


def _groups(
    dense: np.ndarray, sizes: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The samples (``dense``: each one's shard, numbered from 0) listed shard after shard,
    index order within a shard, and cut into consecutive groups of ``sizes`` samples. For each
    group: its shards, its samples, and the place of each sample's shard among the group's."""
    samples = np.argsort(dense, kind="stable").astype(np.int64)
    at = dense[samples]  # each listed sample's shard
    members, grouped, local = [], [], []
    for lo, hi in itertools.pairwise(np.concatenate([[0], np.cumsum(sizes)]).tolist()):
        first = int(at[lo]) if hi > lo else 0
        last = int(at[hi - 1]) if hi > lo else -1
        members.append(np.arange(first, last + 1))
        grouped.append(samples[lo:hi])
        local.append(at[lo:hi] - first)
    return members, grouped, local


def _interleave(sequences: list[np.ndarray], part: int) -> np.ndarray:
    """Global batches of ``part`` samples from each sequence in turn, while every sequence
    has ``part`` left; then what is left of each, one after the other."""
    if len(sequences) == 1:
        return sequences[0]
    rounds = min(len(s) for s in sequences) // part
    body = np.stack([s[: rounds * part].reshape(rounds, part) for s in sequences], axis=1)
    tail = [s[rounds * part :] for s in sequences]
    return np.concatenate([body.reshape(-1), *tail]).astype(np.int64)


@hookimpl
def gristmill_samplers() -> list[SamplerType]:
    return [
        SamplerType(
            name="shard-blocks",
            description="shuffled shards, each shard's samples shuffled over a window of "
            f"shards (default {DEFAULT_WINDOW}): few shards read at a time, for a small cache "
            "of a remote dataset; partitions=P keeps each of P nodes on its own shards",
            factory=ShardBlocks,
            number_option="window",
            options={
                "window": f"shards read at once, per group (default {DEFAULT_WINDOW}): larger "
                "mixes more and needs a cache of about that many shards a node",
                "partitions": "groups of shards (default 1), one per node: each global batch "
                "takes an equal part from each group; must divide the global batch",
                "shuffle": "false: the shards in index order, their samples in index order "
                "(default true)",
            },
        )
    ]
