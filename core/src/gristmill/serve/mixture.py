"""Mixtures: several datasets served in one loader, in exact proportions per epoch.

An epoch of a mixture is ``num_samples`` entries; dataset ``i`` fills exactly ``counts[i]`` of
them, its weight's share (largest remainders, so the counts add up to ``num_samples``). Which of
its samples fill them comes from an endless run of permutations of that dataset (one per pass,
from ``(seed, i, pass)``): epoch ``e`` takes entries ``[e·c, (e+1)·c)`` of it, except that
where the window crosses into a new pass, that pass serves the samples the window has not yet
served first. So no sample comes more than ``ceil(c / n)`` times in an epoch, and a dataset that
an epoch samples down is served on in the next epoch where the last one stopped: its first
``ceil(n / c)`` epochs serve every one of its samples.

By default an epoch is as long as the mixture can be without serving any sample twice (the
dataset that the weights use up first is served exactly once); ``max_repeat=k`` lengthens it
until that dataset is served ``k`` times, and no sample is served more than ``k`` times per
epoch. ``num_samples`` sets the length itself (refused when it would pass ``max_repeat``).

A mixture is what a loader takes where it takes a dataset: the sampler plugin orders the epoch's
entries, and the loader cuts steps, pads, and resumes exactly as for one dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gristmill.errors import DatasetError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import Sampler, SamplerType
from gristmill.serve.dataset import Dataset


class Mixture:
    """Datasets with weights (see :func:`mixture`). ``mix[k]`` is sample ``k`` of the datasets
    one after another (``len(mix)`` of them); an epoch serves ``num_samples`` entries."""

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        weights: Mapping[str, float],
        *,
        num_samples: int | None = None,
        max_repeat: int | None = None,
        seed: int = 0,
    ):
        num_samples = None if num_samples is None else check_int("num_samples", num_samples)
        max_repeat = None if max_repeat is None else check_int("max_repeat", max_repeat)
        seed = check_int("seed", seed, at_least=None)
        if not datasets:
            raise DatasetError("a mixture needs at least one dataset")
        if set(weights) != set(datasets):
            raise DatasetError(
                "give one weight per dataset: "
                f"datasets {sorted(datasets)}, weights {sorted(weights)}"
            )
        self.names = list(datasets)
        self.datasets = [datasets[name] for name in self.names]
        raw = np.array([float(weights[name]) for name in self.names])
        if not np.all(np.isfinite(raw)) or np.any(raw < 0) or raw.sum() <= 0:
            raise DatasetError(
                f"weights must be finite, non-negative and not all 0, got {dict(weights)}"
            )
        labels = {d.labels for d in self.datasets}
        if len(labels) > 1:
            raise DatasetError(
                f"the datasets disagree on labels ({', '.join(sorted(labels))}): open them all "
                "with the same labels="
            )
        sizes = np.array([len(d) for d in self.datasets], np.int64)
        used = raw > 0
        empty = [n for n, s, u in zip(self.names, sizes, used) if u and s == 0]
        if empty:
            raise DatasetError(f"dataset(s) {', '.join(empty)} have no samples but a weight")
        self.weights = raw / raw.sum()
        self.max_repeat, self.seed = max_repeat, int(seed)
        if num_samples is None:
            # As long as possible while the first dataset used up is served max_repeat times.
            num_samples = int(np.floor(min(sizes[used] * (max_repeat or 1) / self.weights[used])))
        self.num_samples = int(num_samples)
        self.counts = apportion(self.weights, self.num_samples)
        if max_repeat is not None:
            over = [
                f"{n}: {c:,} entries of {s:,} samples"
                for n, c, s in zip(self.names, self.counts, sizes)
                if c > max_repeat * s
            ]
            if over:
                raise DatasetError(
                    f"num_samples {self.num_samples:,} would serve some samples more than "
                    f"max_repeat={max_repeat} times per epoch ({'; '.join(over)}); lower "
                    "num_samples, or raise max_repeat"
                )
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: int) -> dict[str, np.ndarray]:
        if not 0 <= key < len(self):
            raise IndexError(f"sample {key} out of range for {len(self)} samples")
        which = int(np.searchsorted(self.offsets, key, side="right")) - 1
        return self.datasets[which][int(key - self.offsets[which])]

    def batch(self, keys: Sequence[int] | np.ndarray) -> list[dict[str, np.ndarray]]:
        """Samples ``keys``, as ``[mix[k] for k in keys]`` but read with one
        :meth:`Dataset.batch <gristmill.serve.dataset.Dataset.batch>` call per dataset."""
        keys = np.asarray(keys, np.int64).reshape(-1)
        if len(keys) and (keys.min() < 0 or keys.max() >= len(self)):
            bad = keys[(keys < 0) | (keys >= len(self))][0]
            raise IndexError(f"sample {bad} out of range for {len(self)} samples")
        which = np.searchsorted(self.offsets, keys, side="right") - 1
        out: list[dict[str, np.ndarray]] = [{}] * len(keys)
        for i in np.unique(which).tolist():
            at = np.flatnonzero(which == i)
            for k, sample in zip(at.tolist(), self.datasets[i].batch(keys[at] - self.offsets[i])):
                out[k] = sample
        return out

    @property
    def labels(self) -> str:
        return self.datasets[0].labels

    def entries(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s entries as keys of ``mix[key]``, dataset by dataset."""
        parts = [
            self.offsets[i] + self._window(i, epoch * count, count)
            for i, count in enumerate(self.counts)
            if count
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _window(self, dataset: int, start: int, count: int) -> np.ndarray:
        """Entries ``[start, start + count)`` of the dataset's endless run of passes, except that
        the last pass the window reaches into serves first the samples that its first, partial
        pass did not: so no sample comes more often than ``ceil(count / n)`` times."""
        n = len(self.datasets[dataset])
        first, last = start // n, (start + count - 1) // n
        lo = start - first * n
        head = self._pass(dataset, first)[lo : lo + count]
        if first == last:
            return head
        middle = [self._pass(dataset, p) for p in range(first + 1, last)]
        tail = self._pass(dataset, last)
        if lo:  # the window began inside a pass: its samples go to the end of the last one
            seen = np.isin(tail, head)
            tail = np.concatenate([tail[~seen], tail[seen]])
        return np.concatenate([head, *middle, tail[: start + count - last * n]])

    def _pass(self, dataset: int, number: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, dataset, number])
        return rng.permutation(len(self.datasets[dataset]))

    def sample_lengths(self) -> np.ndarray:
        """Tokens in every sample, in ``mix[k]`` order."""
        return np.concatenate([d.sample_lengths() for d in self.datasets])

    def sampler(self, name: str, *, global_batch: int, **options: Any) -> Sampler:
        """The sampler plugin ``name`` over each epoch's entries."""
        return _EntriesSampler(self, name, global_batch, options)

    def with_seed(self, seed: int) -> Mixture:
        return Mixture(
            dict(zip(self.names, self.datasets)),
            dict(zip(self.names, self.weights)),
            num_samples=self.num_samples,
            max_repeat=self.max_repeat,
            seed=seed,
        )

    @property
    def identity(self) -> str:
        """Which entries an epoch holds: the datasets, their weights, the length and seed."""
        return fingerprint(
            {
                "datasets": {n: d.identity for n, d in zip(self.names, self.datasets)},
                "counts": self.counts.tolist(),
                "seed": self.seed,
            }
        )

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {c:,}" for n, c in zip(self.names, self.counts))
        return f"Mixture({parts}; {self.num_samples:,} samples per epoch)"


class _EntriesSampler:
    """A sampler plugin ordering each epoch's entries (made per epoch: the entries' lengths
    change with the epoch); ``order`` gives keys of ``mix[key]``."""

    def __init__(self, mix: Mixture, name: str, global_batch: int, options: dict[str, Any]):
        self.mix, self.name, self.global_batch = mix, name, global_batch
        self.lengths = mix.sample_lengths()
        record = mix.datasets[0].manager.get(SamplerType, name)
        self._factory, self.options = record.factory, record.check_options(options)
        self._sampler(self.mix.entries(0))  # a bad option value fails now, not at an epoch

    def _sampler(self, entries: np.ndarray) -> Sampler:
        return self._factory(
            len(entries),
            seed=self.mix.seed,
            lengths=self.lengths[entries],
            global_batch=self.global_batch,
            shards=None,  # entries of several datasets: no one split's shard numbers
            **self.options,
        )

    def order(self, epoch: int) -> np.ndarray:
        entries = self.mix.entries(epoch)
        return entries[self._sampler(entries).order(epoch)]


def apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` adding up to ``total`` (largest remainders, ties
    to the first)."""
    exact = weights * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def mixture(
    datasets: Mapping[str, Dataset] | Sequence[Dataset],
    weights: Mapping[str, float] | Sequence[float],
    *,
    num_samples: int | None = None,
    max_repeat: int | None = None,
    seed: int = 0,
) -> Mixture:
    """Datasets served together in exact proportions per epoch, for ``gristmill.torch.dataloader``.

    ``datasets`` and ``weights``: mappings with the same names, or sequences in the same order.
    An epoch holds ``num_samples`` entries, each dataset exactly its weight's share of them
    (rounded by largest remainders). By default the epoch is as long as it can be without
    serving any sample twice; ``max_repeat=k`` allows up to ``k`` times per epoch (and sets the
    default length accordingly). A dataset sampled down continues in the next epoch where the
    last one stopped. ``seed`` picks the samples and passes on to the sampler.
    """
    if not isinstance(datasets, Mapping):
        datasets = {str(i): d for i, d in enumerate(datasets)}
    if not isinstance(weights, Mapping):
        weights = list(weights)
        if len(weights) != len(datasets):
            raise DatasetError(f"{len(datasets)} datasets but {len(weights)} weights")
        weights = dict(zip(datasets, weights))
    return Mixture(datasets, weights, num_samples=num_samples, max_repeat=max_repeat, seed=seed)
