"""A ``torch.utils.data.DataLoader`` over a gristmill dataset that resumes exactly.

The order is decided in the main process (a sampler plugin orders the epoch,
:mod:`gristmill.sampling` gives this rank its share of every step) and the loader counts the
batches it has handed out. So the batches do not depend on ``num_workers``, and
``state_dict()`` is a position in the epoch that any world size with the same global batch can
resume from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from gristmill.dataset import Dataset
from gristmill.errors import GristmillError
from gristmill.samples import IGNORE_INDEX
from gristmill.sampling import Schedule
from gristmill.torch.collator import Collator

STATE_FORMAT = "gristmill-loader"
STATE_VERSION = 1


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """From the arguments, else ``torch.distributed`` once initialised, else ``RANK`` and
    ``WORLD_SIZE`` (as torchrun sets them), else a single process."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            found = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            found = 0, 1
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise GristmillError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    return rank, world_size


class _Marked(torch.utils.data.Dataset):
    """Samples fetched by ``(index, repeat)``: a repeat has no labels, and says so."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> dict[str, Any]:
        index, repeat = key
        sample = self.dataset[index]
        if repeat:
            labels = np.full_like(sample["labels"], IGNORE_INDEX)
            return {**sample, "labels": labels, "repeat": True}
        return sample


class _Steps(torch.utils.data.Sampler):
    """This rank's batches of the loader's current epoch, from its current step on."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        schedule = self.loader.schedule()
        rank = self.loader.rank
        for step in range(self.loader.step, schedule.steps):
            yield schedule.batch(step, rank)

    def __len__(self) -> int:
        return self.loader.schedule().steps


class DataLoader(torch.utils.data.DataLoader):
    """Batches of a gristmill :class:`~gristmill.dataset.Dataset` for this rank (see
    :func:`dataloader`), with ``state_dict()``, ``load_state_dict()`` and ``set_epoch()``."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        sampler: str = "distributed",
        sampler_options: Mapping[str, Any] | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
        **options: Any,
    ):
        if not isinstance(dataset, Dataset):
            raise GristmillError(
                "gristmill.torch.dataloader takes a dataset from gristmill.open_dataset, got "
                f"{type(dataset).__name__}"
            )
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        # Not batch_size/drop_last/dataset: torch's DataLoader owns those names (and the batch
        # sampler below makes its own batches).
        self.source, self.per_rank, self.drop_last_steps = dataset, batch_size, bool(drop_last)
        self.sampler_name, self.sampler_options = sampler, dict(sampler_options or {})
        self.order = dataset.sampler(
            sampler, global_batch=self.world_size * batch_size, **self.sampler_options
        )
        self.epoch = self.step = 0
        self._schedule: tuple[int, Schedule] | None = None
        self.schedule()  # checks the sizes now, not at the first batch
        super().__init__(
            _Marked(dataset),
            batch_sampler=_Steps(self),
            num_workers=num_workers,
            collate_fn=collate_fn or Collator(),
            **options,
        )

    def schedule(self) -> Schedule:
        """The current epoch's steps (computed once per epoch)."""
        if self._schedule is None or self._schedule[0] != self.epoch:
            order = self.order.order(self.epoch)
            schedule = Schedule(order, self.world_size, self.per_rank, self.drop_last_steps)
            self._schedule = (self.epoch, schedule)
        return self._schedule[1]

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        for batch in super().__iter__():
            self.step += 1  # counted as handed out, not as prefetched
            yield batch
        if self.epoch == epoch:  # a whole pass: iterating again serves the next epoch
            self.set_epoch(epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` from its start (its own order, from ``(seed, epoch)``)."""
        self.epoch, self.step = int(epoch), 0

    @property
    def global_batch(self) -> int:
        return self.world_size * self.per_rank

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: resume with ``load_state_dict`` on any rank and any world size
        whose ``world_size × batch_size`` is the same (plain values; save it as JSON or with
        ``torch.save``)."""
        schedule = self.schedule()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "dataset": self.source.identity,
            "num_samples": len(self.source),
            "sampler": self.sampler_name,
            "sampler_options": self.sampler_options,
            "seed": self.source.seed,
            "drop_last": self.drop_last_steps,
            "global_batch": self.global_batch,
            "epoch": self.epoch,
            "position": min(self.step * self.global_batch, schedule.served),
            "world_size": self.world_size,  # for the reader; resuming may use another
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where ``state`` was taken: the next batch is the one that would have come."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise GristmillError(
                "not a gristmill loader state (or from an incompatible version): "
                f"format {state.get('format')!r}, version {state.get('version')!r}"
            )
        mine = self.state_dict()
        differences = [
            f"{what}: {state[key]!r} in the state, {mine[key]!r} here"
            for key, what in (
                ("dataset", "the dataset, split or packing"),
                ("num_samples", "samples"),
                ("sampler", "sampler"),
                ("sampler_options", "sampler options"),
                ("seed", "seed"),
                ("drop_last", "drop_last"),
            )
            if state.get(key) != mine[key]
        ]
        if differences:
            raise GristmillError(
                "this state is from another run, so it cannot resume this loader exactly ("
                + "; ".join(differences)
                + "); open the same dataset with the same settings"
            )
        if state["global_batch"] != self.global_batch:
            raise GristmillError(
                f"the state's global batch is {state['global_batch']} samples per step "
                f"({state['world_size']} ranks), this loader's is {self.global_batch} "
                f"({self.world_size} × batch_size {self.per_rank}): choose batch_size so that "
                "world_size × batch_size is the same, and every remaining step keeps its samples"
            )
        self.set_epoch(state["epoch"])
        self.step = -(-int(state["position"]) // self.global_batch)


def dataloader(
    dataset: Dataset,
    *,
    batch_size: int,
    sampler: str = "distributed",
    seed: int | None = None,
    **options: Any,
) -> DataLoader:
    """A DataLoader over ``dataset`` for this rank, resumable with ``state_dict()``.

    ``sampler`` names a sampler plugin: ``distributed`` (a new shuffle every epoch, the
    default; ``sampler_options={"shuffle": False}`` keeps index order), ``random`` (the same),
    ``distributed-length-grouped`` (steps of samples of similar length) or ``sequential``.
    ``seed`` overrides the dataset's. Rank and world size come from ``rank=``/``world_size=``,
    else ``torch.distributed``, else ``RANK``/``WORLD_SIZE``, else one process. Every rank
    serves the same number of steps: without ``drop_last`` the epoch is padded with fewer than
    ``world_size`` repeated samples, whose labels are all -100 (the batch marks them in
    ``repeat``); with ``drop_last`` only whole global batches are served. Batches are
    collated by :class:`~gristmill.torch.Collator` unless ``collate_fn`` says otherwise; other
    options (``num_workers``, ``pin_memory``, ``persistent_workers``…) go to
    ``torch.utils.data.DataLoader``.
    """
    if seed is not None and seed != dataset.seed:
        dataset = Dataset(**{**dataset.__getstate__(), "seed": seed})
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **options)
