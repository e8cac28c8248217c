"""A ``torch.utils.data.DataLoader`` over a gristmill dataset that resumes exactly.

The order is decided in the main process (a sampler plugin orders the epoch,
:mod:`gristmill.serve.schedule` gives this rank its share of every step) and the loader counts the
batches it has handed out. So the batches do not depend on ``num_workers``, and
``state_dict()`` is a position in the epoch that any world size with the same global batch can
resume from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import accumulate, pairwise
from typing import Any, NamedTuple

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.remote.evict import EvictionPolicy
from gristmill.plugin.remote.prefetch import Prefetcher, Timeline, in_use
from gristmill.serve.dataset import Dataset
from gristmill.serve.metrics import PlannedMetrics
from gristmill.serve.mixture import Mixture
from gristmill.serve.samples import SampleBatch
from gristmill.serve.schedule import Schedule
from gristmill.serve.stream import Stream
from gristmill.torch.collator import Collator
from gristmill.torch.ranks import (
    as_repeat,
    rank_and_world_size,
    rebuilt_elsewhere,
    refuse_other_runs,
)
from gristmill.torch.streaming import StreamLoader

STATE_FORMAT = "gristmill-loader"
READ_AHEAD = 8  # steps fetched together (after the first), in one process or in a worker
STATE_VERSION = 1
PREFETCH = 4  # shards a remote dataset's loader fetches ahead, unless the dataset says

log = logging.getLogger("gristmill")


class _Chunk(NamedTuple):
    """Consecutive steps of this rank: their samples (indices, concatenated), the places of
    the repeats among them, how many samples each step has, and the first step's number."""

    indices: np.ndarray
    repeats: list[int]
    sizes: list[int]
    step: int = 0


class _Marked(torch.utils.data.Dataset):
    """A chunk's batches, fetched and collated: torch hands a worker a chunk (one item of
    :class:`_Steps`) in one ``__getitems__`` call, and a dataset or mixture serves all of its
    samples with one ``batch()``."""

    def __init__(self, dataset: Dataset | Mixture, collate: Callable[[Any], Any]):
        self.dataset, self.collate = dataset, collate
        # A remote dataset's reads of this pass, and Belady's rule over them: a worker (forked
        # or spawned with this object) evicts by them too, from the step it reads.
        self.timeline: Timeline | None = None
        self.oracle: EvictionPolicy | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __getitems__(self, chunk: _Chunk) -> list[Any]:
        if self.timeline is not None and isinstance(self.dataset, Dataset):
            self.timeline.reading(chunk.step, chunk.step + len(chunk.sizes))
            if self.dataset.mirror is not None and self.dataset.mirror.policy is not self.oracle:
                self.dataset.mirror.policy = self.oracle  # type: ignore[assignment]
        samples = self.dataset.batch(chunk.indices)
        if chunk.repeats and isinstance(samples, SampleBatch):
            samples = samples.with_repeats(chunk.repeats)
        elif chunk.repeats:
            repeats = set(chunk.repeats)
            samples = [as_repeat(s) if k in repeats else s for k, s in enumerate(samples)]
        if isinstance(samples, SampleBatch) and type(self.collate) is Collator:
            # Every step's batch made together (not for a subclass: it may collate anew).
            return self.collate.batches(samples, chunk.sizes)
        if isinstance(samples, SampleBatch):
            parts: list[Any] = samples.split(chunk.sizes)
        else:
            parts = [samples[a:b] for a, b in pairwise(accumulate(chunk.sizes, initial=0))]
        return [self.collate(part) for part in parts]


def _collated(batches: list[Any]) -> list[Any]:
    """Torch's ``collate_fn``: ``__getitems__`` has collated a chunk's batches already."""
    return batches


class _Steps(torch.utils.data.Sampler):
    """This rank's steps of the loader's current epoch, from its current step on, in chunks:
    the first step alone (so that the first batch comes as soon as it can), then
    ``READ_AHEAD`` steps a chunk, which cost little more to fetch than one (the array work is
    per call, not per sample) and cross from a worker to the main process as one block of
    memory. Its length is the epoch's number of steps. Only its own loader may iterate it,
    once per pass (``armed``): a loader rebuilt from its parts gets a clear error."""

    def __init__(self, loader: DataLoader):
        self.loader, self.armed = loader, False
        self.dispatched = 0  # the steps before it are handed to the readers

    def __iter__(self) -> Iterator[_Chunk]:
        # Checked at the first chunk, not at iter(): torch calls iter() twice before that.
        if not self.armed:
            raise rebuilt_elsewhere()
        self.armed = False
        schedule, rank = self.loader.schedule(), self.loader.rank
        step, ahead = self.loader.step, 1
        while step < schedule.steps:
            steps = range(step, min(step + ahead, schedule.steps))
            step, ahead = steps.stop, READ_AHEAD
            indices, repeats, sizes = schedule.shares(steps, rank)
            self.dispatched = steps.stop
            if self.loader.prefetcher is not None:  # these steps are read now: fetch past them
                self.loader.prefetcher.advance(steps.stop)
            yield _Chunk(indices, np.flatnonzero(repeats).tolist(), sizes, steps.start)

    def __len__(self) -> int:
        return self.loader.schedule().steps


class DataLoader(torch.utils.data.DataLoader):
    """Batches of a gristmill :class:`~gristmill.serve.dataset.Dataset` or
    :class:`~gristmill.serve.mixture.Mixture` for this rank (see :func:`dataloader`), with
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
        node_ranks: Sequence[int] | None = None,
        **options: Any,
    ):
        if not isinstance(dataset, (Dataset, Mixture)):
            raise GristmillError(
                "gristmill.torch.dataloader takes a dataset from gristmill.open_dataset, a "
                f"mixture from gristmill.mixture or a stream from gristmill.stream, got "
                f"{type(dataset).__name__}"
            )
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.node_ranks = self._node_ranks(node_ranks)
        self.prefetcher: Prefetcher | None = None  # a remote dataset's, during a pass
        self._reads: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
        self._warned_spread = False  # a remote dataset's order, too spread for its cache
        # Not batch_size/drop_last/dataset: torch's DataLoader owns those names (and the batch
        # sampler below makes its own batches).
        self.source, self.per_rank, self.drop_last_steps = dataset, batch_size, bool(drop_last)
        self.sampler_name, self.sampler_options = sampler, dict(sampler_options or {})
        self.order = dataset.sampler(
            sampler, global_batch=self.world_size * batch_size, **self.sampler_options
        )
        self.epoch = self.step = 0
        self._schedule: tuple[int, Schedule] | None = None
        self._last: tuple[Schedule, int] | None = None  # the step last handed out, for metrics()
        self._metrics = PlannedMetrics(dataset)
        self.schedule()  # checks the sizes now, not at the first batch
        # Not collate_fn either: torch's is the identity, a chunk's batches come collated.
        self.collate = collate_fn or Collator()
        super().__init__(
            _Marked(dataset, self.collate),
            batch_sampler=_Steps(self),
            num_workers=num_workers,
            collate_fn=_collated,
            **options,
        )

    def schedule(self) -> Schedule:
        """The current epoch's steps (computed once per epoch)."""
        if self._schedule is None or self._schedule[0] != self.epoch:
            self._schedule = (self.epoch, self._schedule_of(self.epoch))
        return self._schedule[1]

    def _schedule_of(self, epoch: int) -> Schedule:
        order = self.order.order(epoch)
        return Schedule(order, self.world_size, self.per_rank, self.drop_last_steps)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        timeline = self.dataset.timeline = self.timeline()
        mirror = self.source.mirror if isinstance(self.source, Dataset) else None
        policy = None if mirror is None else mirror.policy
        if timeline is not None and mirror is not None:
            # Before the workers start: a forked one evicts by it too.
            self.dataset.oracle = mirror.policy = timeline.oracle()
            self._warn_if_too_spread(mirror)
        try:
            for batch in self._batches(timeline):
                self._last = (self.schedule(), self.step)
                self.step += 1  # counted as handed out, not as prefetched
                if timeline is not None and timeline.now < self.step:
                    timeline.now = self.step
                yield batch
        finally:
            self._end_pass(mirror, policy)
        if self.epoch == epoch:  # a whole pass: iterating again serves the next epoch
            self.set_epoch(epoch + 1)

    def _end_pass(self, mirror: Any, policy: EvictionPolicy | None) -> None:
        """Stop fetching ahead, and give the mirror back the policy it had before the pass."""
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.prefetcher = self.dataset.timeline = self.dataset.oracle = None
        if mirror is not None and policy is not None:
            mirror.policy = policy

    def _warn_if_too_spread(self, mirror: Any) -> None:
        """Say once when this epoch's order keeps more shards in use at once than the cache
        limit leaves room for: the mirror then downloads shards again and again."""
        room, reads = mirror.room(), self.shard_reads(self.epoch)
        if room is None or reads is None or self._warned_spread:
            return
        assert isinstance(self.source, Dataset)  # a timeline is a dataset's
        files = self.source.shard_files
        sizes = {int(k): sum(int(e["bytes"]) for e in files(int(k))) for k in np.unique(reads[1])}
        needed = in_use(reads[0], reads[1], sizes)
        if needed > room:
            self._warned_spread = True
            log.warning(
                f"the {self.sampler_name!r} sampler keeps about {needed / 1e6:,.1f} MB of shards "
                f"in use at once (each from its first read in the epoch to its last), more than "
                f"the {room / 1e6:,.1f} MB that cache_limit leaves for shards: expect shards to "
                "be downloaded many times an epoch. sampler='shard-blocks' reads few shards at "
                "a time (docs/remote.md, locality), or raise cache_limit"
            )

    def _node_ranks(self, given: Sequence[int] | None) -> list[int]:
        """The ranks whose reads this rank's mirror serves: ``given`` (this rank among them),
        else this rank alone."""
        if given is None:
            return [self.rank]
        ranks = sorted({check_int("node_ranks", r, at_least=0) for r in given})
        if self.rank not in ranks or ranks[-1] >= self.world_size:
            raise GristmillError(
                f"node_ranks {ranks} must hold this rank ({self.rank}) and only ranks below "
                f"the world size ({self.world_size})"
            )
        return ranks

    def timeline(self) -> Timeline | None:
        """A remote dataset's reads of shard files on this node, from the current step to the
        end of the next epoch (whose steps follow this one's); ``None`` for a local dataset,
        a mixture, or a shard format that cannot say which shard holds a document."""
        source = self.source
        if not isinstance(source, Dataset) or source.mirror is None:
            if isinstance(source, Mixture) and any(d.mirror for d in source.datasets):
                log.warning(
                    "a mixture's remote datasets are fetched at their reads (no prefetch) "
                    "and their mirrors drop the least recently used file first"
                )
            return None
        for epoch in list(self._reads):
            if epoch not in (self.epoch, self.epoch + 1):
                del self._reads[epoch]
        now, later = self.shard_reads(self.epoch), self.shard_reads(self.epoch + 1)
        if now is None or later is None:
            return None
        start = int(np.searchsorted(now[0], self.step, "left"))
        steps = np.concatenate([now[0][start:], later[0] + self.schedule().steps])
        shards = np.concatenate([now[1][start:], later[1]])
        timeline = Timeline(steps, shards, source.shard_files)
        timeline.now = self.step
        return timeline

    def shard_reads(self, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The steps and shards of epoch ``epoch``'s reads on this node's ranks, in order (a
        step's reads rank by rank; a shard read again right after itself counted once)."""
        if epoch in self._reads:
            return self._reads[epoch]
        assert isinstance(self.source, Dataset)
        schedule = self.schedule() if epoch == self.epoch else self._schedule_of(epoch)
        steps, shards = [], []
        for rank in self.node_ranks:
            indices, _, sizes = schedule.shares(range(schedule.steps), rank)
            reads = self.source.shard_reads(indices)
            if reads is None:
                self._reads[epoch] = None
                return None
            steps.append(np.repeat(np.arange(len(sizes)), sizes)[reads[1]])
            shards.append(reads[0])
        step, shard = np.concatenate(steps), np.concatenate(shards)
        order = np.argsort(step, kind="stable")
        step, shard = step[order], shard[order]
        keep = np.ones(len(shard), bool)
        keep[1:] = (shard[1:] != shard[:-1]) | (step[1:] != step[:-1])
        self._reads[epoch] = (step[keep], shard[keep])
        return self._reads[epoch]

    def _batches(self, timeline: Timeline | None) -> Iterator[Any]:
        """Every chunk's batches: with workers (or pinned memory) through torch's iterator,
        else fetched right here (without the profiler annotation around every batch, which is
        all torch's single-process iterator adds). A remote dataset's shards are fetched
        ahead from the start of the pass."""
        self.batch_sampler.armed = True
        self.batch_sampler.dispatched = self.step
        if self.num_workers or self.pin_memory:
            chunks: Iterator[list[Any]] = super().__iter__()
        else:
            chunks = map(self.dataset.__getitems__, self.batch_sampler)
        # Only now, with the workers started: a process forked while a fetch thread holds a
        # file's lock would hold it too, for good (a flock belongs to the open file).
        if timeline is not None and isinstance(self.source, Dataset) and self.source.mirror:
            ahead = self.source.options.prefetch
            ahead = PREFETCH if ahead is None else ahead
            if ahead:
                self.prefetcher = Prefetcher(self.source.mirror, timeline, ahead)
                self.prefetcher.advance(self.batch_sampler.dispatched)
        for batches in chunks:
            yield from batches

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` from its start (its own order, from ``(seed, epoch)``)."""
        self.epoch, self.step = int(epoch), 0

    @property
    def global_batch(self) -> int:
        return self.world_size * self.per_rank

    def metrics(self, step: int | None = None) -> dict[str, int | float]:
        """The packing figures of a step over every rank (their keys and meaning:
        :mod:`gristmill.serve.metrics`): of the batch last handed out, or of ``step`` of the
        current epoch, served or not. Computed from the epoch's plan on this rank alone, with
        no collective; the first call finds every sample's figures (from the pack plan, and
        from the loss masks where the split has them)."""
        if step is None:
            if self._last is None:
                raise GristmillError(
                    "no batch has been handed out yet: call metrics() after taking a batch, "
                    "or name a step of the epoch with metrics(step)"
                )
            schedule, step = self._last
        else:
            schedule, step = self.schedule(), check_int("step", step, at_least=0)
            if step >= schedule.steps:
                raise GristmillError(
                    f"step {step} is past the end of epoch {self.epoch}, which has "
                    f"{schedule.steps} steps"
                )
        return self._metrics.step(schedule, step)

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
    (``num_workers``, ``pin_memory``…) go to ``torch.utils.data.DataLoader``. After a batch,
    ``loader.metrics()`` gives the step's packing figures over every rank, a dict to log
    (:mod:`gristmill.serve.metrics`).

    A dataset: ``sampler`` names a sampler plugin: ``distributed`` (a new shuffle every epoch,
    the default; ``sampler_options={"shuffle": False}`` keeps index order), ``random`` (the
    same), ``distributed-length-grouped`` (steps of samples of similar length),
    ``shard-blocks`` (shuffled, but few shards at a time: for a remote dataset read through a
    small cache) or ``sequential``. ``seed`` overrides the dataset's. Without ``drop_last`` the epoch is padded
    with fewer than ``world_size`` repeats; with it only whole global batches are served.

    A stream (:class:`~gristmill.torch.streaming.StreamLoader`): its pieces are dealt to the
    ranks, in a new order every epoch unless ``shuffle=False``, from ``seed`` (default 0);
    workers tokenize, the main process packs, and the ranks agree on every step. A rank that
    runs out first serves repeats until the others are done; with ``drop_last`` the epoch ends
    as soon as a rank lacks a full batch. torch.distributed must be initialised on more than
    one rank. A stream has no length: ``len()`` says so, and a trainer takes a number of steps
    instead.
    """
    batch_size = check_int("batch_size", batch_size)
    seed = None if seed is None else check_int("seed", seed, at_least=None)
    for name, at_least in (("rank", 0), ("world_size", 1)):
        if options.get(name) is not None:
            options[name] = check_int(name, options[name], at_least=at_least)
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
