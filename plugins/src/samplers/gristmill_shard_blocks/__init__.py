"""The ``shard-blocks`` sampler: shuffled, but reading few shards at a time.

A fully shuffled epoch (``distributed``) reads every shard all through the epoch, so a node
whose cache holds less than the dataset downloads each shard again and again. This sampler
visits the shards in a shuffled order and spreads each shard's samples, shuffled, over a span of
``window`` shards' turns: shard number ``k`` of the visit has its samples at keys drawn
uniformly in ``[k, k + window)`` (in shard units), and the epoch is the samples sorted by key.
So at any point of the order at most ``window`` shards have been started and not finished: a
cache of about ``window`` shards per node (plus what is fetched ahead) downloads each shard
once an epoch, and a new shard starts about every shard's worth of samples, never all at once.

``partitions=P`` (MosaicML streaming's canonical nodes) splits the shards into ``P`` groups of
about equal samples, fixed for the run (from the seed): each global batch is cut into ``P``
equal contiguous parts, part ``p`` taken from group ``p``. Ranks take contiguous shares of a
global batch (:mod:`gristmill.serve.schedule`), so with ``P`` nodes of equal rank counts (or a
number of nodes dividing ``P``) each node reads its own groups' shards alone, and a node whose
cache holds its groups downloads each shard once in the whole run. When a group runs out before
the others, the samples left in every group come last, group after group (the tail, where
nodes read other groups' shards too): equal groups leave less than a global batch of tail.

The order depends on ``(seed, epoch)`` and the options only, never on the number of ranks, so
exact cover, equal steps and elastic resume with the same global batch hold as for any sampler.
Trade-off: a step's samples come from about ``window`` shards (per group) rather than from the
whole dataset; a larger window mixes more and needs a larger cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import GristmillError, OptionError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.components import SamplerType

DEFAULT_WINDOW = 8  # shards read at once (per group)
# Key units per shard: keys are integers, so that a shard's samples all come before those of
# the shard ``window`` turns later, exactly.
UNIT = 1 << 20
# Streams of random numbers apart: the groups' (one for the run) and each epoch's.
GROUPS, EPOCHS = 0, 1


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
        counts = np.bincount(dense)
        if num_samples and self.partitions > len(counts):
            raise OptionError(
                f"partitions={self.partitions}, but the samples lie in {len(counts)} shards: "
                "give at most one partition a shard"
            )
        listed = _rng(seed, GROUPS).permutation(len(counts)) if shuffle else None
        members, self._samples, self._local = _groups(dense, counts, listed, self.partitions)
        self.groups = [ids[m] for m in members]  # the shard numbers of each group

    def order(self, epoch: int) -> np.ndarray:
        rng = _rng([self.seed, epoch], EPOCHS)
        sequences = [
            self._sequence(samples, local, rng)
            for samples, local in zip(self._samples, self._local)
        ]
        return _interleave(sequences, self.part)

    def _sequence(self, samples: np.ndarray, local: np.ndarray, rng: Any) -> np.ndarray:
        """One group's samples in this epoch's order."""
        if not self.shuffle or not len(samples):
            return samples
        turn = rng.permutation(int(local.max()) + 1)[local]  # each shard's turn in the visit
        keys = turn * UNIT + rng.integers(0, self.window * UNIT, len(samples))
        return samples[np.argsort(keys, kind="stable")]


def _rng(entropy: Any, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(stream,)))


def _groups(
    dense: np.ndarray, counts: np.ndarray, listed: np.ndarray | None, partitions: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The shards (dense numbers ``dense`` of the samples; ``counts`` their samples) listed in
    ``listed`` order (index order for ``None``), cut into ``partitions`` consecutive spans of
    about equal samples, a shard going to the group that holds its middle sample. For each
    group: its shards in listed order, its samples shard after shard (index order within a
    shard), and the position of each sample's shard among the group's."""
    listed = np.arange(len(counts)) if listed is None else listed
    ends = np.cumsum(counts[listed])
    group = ((2 * ends - counts[listed]) * partitions) // (2 * max(int(ends[-1:].sum()), 1))
    position = np.empty(len(counts), np.int64)  # each shard's place in the listing
    position[listed] = np.arange(len(listed))
    samples = np.argsort(position[dense], kind="stable").astype(np.int64)
    firsts = np.searchsorted(group, np.arange(partitions + 1))  # each group's first shard
    bounds = np.concatenate([[0], ends])[firsts]  # and its first sample
    members, grouped, local = [], [], []
    for p in range(partitions):
        members.append(listed[firsts[p] : firsts[p + 1]])
        grouped.append(samples[bounds[p] : bounds[p + 1]])
        local.append(position[dense[grouped[-1]]] - firsts[p])
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
