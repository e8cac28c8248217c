"""A ``torch.utils.data.DataLoader`` over a gristmill dataset that resumes exactly.

The order is decided in the main process (a sampler plugin orders the epoch,
:mod:`gristmill.sampling` gives this rank its share of every step) and the loader counts the
batches it has handed out. So the batches do not depend on ``num_workers``, and
``state_dict()`` is a position in the epoch that any world size with the same global batch can
resume from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import accumulate, pairwise
from typing import Any

import numpy as np
import torch

from gristmill.dataset import Dataset
from gristmill.errors import GristmillError
from gristmill.mixture import Mixture
from gristmill.samples import SampleBatch
from gristmill.sampling import Schedule
from gristmill.stream import Stream
from gristmill.torch.collator import Collator
from gristmill.torch.ranks import as_repeat, rank_and_world_size, refuse_other_runs
from gristmill.torch.streaming import StreamLoader

STATE_FORMAT = "gristmill-loader"
READ_AHEAD = 8  # steps fetched together when there are no workers
STATE_VERSION = 1


class _Marked(torch.utils.data.Dataset):
    """Samples fetched by ``(index, repeat)``. Torch fetches a step's keys with one
    ``__getitems__`` call, which a dataset or mixture serves with ``batch()``."""

    def __init__(self, dataset: Dataset | Mixture):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, bool]]) -> Sequence[dict[str, Any]]:
        indices = [index for index, _ in keys]
        return self.fetch(indices, [k for k, (_, repeat) in enumerate(keys) if repeat])

    def fetch(
        self, indices: Sequence[int] | np.ndarray, repeats: Sequence[int]
    ) -> Sequence[dict[str, Any]]:
        """Samples ``indices``, those at places ``repeats`` marked as repeats."""
        samples = self.dataset.batch(indices)
        if not len(repeats):
            return samples
        if isinstance(samples, SampleBatch):
            return samples.with_repeats(repeats)
        return [as_repeat(s) if k in repeats else s for k, s in enumerate(samples)]


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
    """Batches of a gristmill :class:`~gristmill.dataset.Dataset` or
    :class:`~gristmill.mixture.Mixture` for this rank (see :func:`dataloader`), with
    ``state_dict()``, ``load_state_dict()`` and ``set_epoch()``."""

    def __init__(
        self,
        dataset: Dataset | Mixture,
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
        if not isinstance(dataset, (Dataset, Mixture)):
            raise GristmillError(
                "gristmill.torch.dataloader takes a dataset from gristmill.open_dataset, a "
                f"mixture from gristmill.mixture or a stream from gristmill.stream, got "
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
        for batch in self._batches():
            self.step += 1  # counted as handed out, not as prefetched
            yield batch
        if self.epoch == epoch:  # a whole pass: iterating again serves the next epoch
            self.set_epoch(epoch + 1)

    def _batches(self) -> Iterator[Any]:
        """With workers (or pinned memory), torch's iterator. Without, batches made right here:
        after the first, ``READ_AHEAD`` steps looked up and fetched in one call each, which
        costs little more than for one step (the array work is per call, not per sample), then
        cut into steps and collated one by one as they are asked for; and no profiler
        annotation around every batch, which is all torch's single-process iterator adds."""
        if self.num_workers or self.pin_memory:
            yield from super().__iter__()
            return
        schedule, step = self.schedule(), self.step
        ahead = 1  # the first batch alone, so that it comes as soon as it can
        while step < schedule.steps:
            steps = range(step, min(step + ahead, schedule.steps))
            step, ahead = steps.stop, READ_AHEAD
            indices, repeats, sizes = schedule.shares(steps, self.rank)
            fetched = self.dataset.fetch(indices, np.flatnonzero(repeats).tolist())
            if isinstance(fetched, SampleBatch) and type(self.collate_fn) is Collator:
                # Every step's batch made together (not for a subclass: it may collate anew).
                yield from self.collate_fn.batches(fetched, sizes)
                continue
            if isinstance(fetched, SampleBatch):
                parts: list[Any] = fetched.split(sizes)
            else:
                parts = [fetched[a:b] for a, b in pairwise(accumulate(sizes, initial=0))]
            for part in parts:
                yield self.collate_fn(part)

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
        refuse_other_runs(
            state,
            self.state_dict(),
            (
                ("dataset", "the dataset, split or packing"),
                ("num_samples", "samples"),
                ("sampler", "sampler"),
                ("sampler_options", "sampler options"),
                ("seed", "seed"),
                ("drop_last", "drop_last"),
            ),
            "open the same dataset with the same settings",
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
    data: Dataset | Mixture | Stream,
    *,
    batch_size: int,
    sampler: str | None = None,
    seed: int | None = None,
    **options: Any,
) -> DataLoader | StreamLoader:
    """A DataLoader over ``data`` for this rank, resumable with ``state_dict()``.

    ``data`` is a dataset from :func:`~gristmill.open_dataset`, a mixture of datasets from
    :func:`~gristmill.mixture` (served like one dataset whose epoch holds each in its
    proportion) or a stream from :func:`~gristmill.stream`. Rank and world size come from ``rank=``/``world_size=``, else
    ``torch.distributed``, else ``RANK``/``WORLD_SIZE``, else one process. Every rank serves
    the same number of steps, and repeated samples that keep them in step have labels all -100
    (the batch marks them in ``repeat``). Batches are collated by
    :class:`~gristmill.torch.Collator` unless ``collate_fn`` says otherwise; other options
    (``num_workers``, ``pin_memory``…) go to ``torch.utils.data.DataLoader``.

    A dataset: ``sampler`` names a sampler plugin: ``distributed`` (a new shuffle every epoch,
    the default; ``sampler_options={"shuffle": False}`` keeps index order), ``random`` (the
    same), ``distributed-length-grouped`` (steps of samples of similar length) or
    ``sequential``. ``seed`` overrides the dataset's. Without ``drop_last`` the epoch is padded
    with fewer than ``world_size`` repeats; with it only whole global batches are served.

    A stream (:class:`~gristmill.torch.streaming.StreamLoader`): its pieces are dealt to the
    ranks, in a new order every epoch unless ``shuffle=False``, from ``seed`` (default 0);
    workers tokenize, the main process packs, and the ranks agree on every step. A rank that
    runs out first serves repeats until the others are done; with ``drop_last`` the epoch ends
    as soon as a rank lacks a full batch. torch.distributed must be initialised on more than
    one rank.
    """
    if isinstance(data, Stream):
        if sampler is not None:
            raise GristmillError(
                f"a stream is served in the order of its pieces, so it takes no sampler (got "
                f"{sampler!r}); pass shuffle=False to keep the pieces in order"
            )
        return StreamLoader(data, batch_size=batch_size, seed=seed or 0, **options)
    if seed is not None and seed != data.seed:
        data = data.with_seed(seed)
    return DataLoader(data, batch_size=batch_size, sampler=sampler or "distributed", **options)
