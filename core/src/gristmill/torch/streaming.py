"""Streams on many ranks and DataLoader workers: equal steps, exact cover, exact resumption.

The model (docs/distributed.md, "Streams", says it for users):

- **Pieces are dealt to ranks.** A stream's pieces (cut by input size alone, each packed on its
  own: :mod:`gristmill.serve.stream`) are ordered per epoch (a permutation from ``(seed, epoch)``, or
  in order) and dealt round-robin: rank ``r`` gets positions ``r, r + R, …``. Every piece goes
  to exactly one rank, and a piece's samples depend on the piece alone.
- **Workers tokenize; the main process packs.** The chunks of this rank's pieces are numbered
  in order and worker ``w`` of ``W`` reads and tokenizes chunks ``w, w + W, …``; torch hands
  their results back in that same round-robin order, which the loader checks. The main process
  packs the pieces in order, so the samples and batches are the same whatever ``num_workers``.
- **Equal steps by agreement.** Before each step every rank all-gathers three numbers: how many
  real samples it has for the step and where it is (item, samples served in it). All ranks see
  the same numbers and take the same decision: the epoch ends when no rank has a sample left
  (with ``drop_last``: when any rank lacks a full batch), so every rank serves the same number
  of steps. A step's batches all have as many samples as the fullest rank has; a rank with
  fewer fills up with marked repeats (labels -100, ``repeat`` set). Repeats come only at the
  end of an epoch, about as many as the ranks' shares of pieces differ.
- **Resumption.** Since every rank sees every rank's position, ``state_dict()`` on any rank
  holds all of them: per rank, the pieces it has still to serve, the first one with the
  samples already served. On the same world size each rank continues exactly where it was (the
  same batches as without the interruption); on another world size the remaining pieces are
  dealt again (each remaining sample once; the batches differ).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.plugin.arguments import check_int
from gristmill.serve.metrics import batch_figures, stream_step
from gristmill.serve.samples import build_sample
from gristmill.serve.stream import Stream, StreamStats, TokenizedChunk
from gristmill.torch.collator import Collator
from gristmill.torch.ranks import (
    as_repeat,
    rank_and_world_size,
    rebuilt_elsewhere,
    refuse_other_runs,
)

log = logging.getLogger("gristmill")

STATE_FORMAT = "gristmill-stream-loader"
STATE_VERSION = 1

Work = list[list[list[int]]]  # per rank: [piece, samples of it already served], in order


def deal(pieces: int, world_size: int, *, seed: int, epoch: int, shuffle: bool) -> Work:
    """Epoch ``epoch``'s pieces for every rank: positions ``r, r + R, …`` of the epoch's order."""
    order = (
        np.random.default_rng([seed, epoch]).permutation(pieces) if shuffle else np.arange(pieces)
    )
    return [[[int(p), 0] for p in order[r::world_size]] for r in range(world_size)]


def redeal(work: Work, world_size: int) -> Work:
    """Remaining work of some number of ranks dealt to ``world_size`` ranks, round-robin over
    the ranks' lists interleaved (their first items first): each item to exactly one rank."""
    depth = max(map(len, work), default=0)
    interleaved = [w[d] for d in range(depth) for w in work if d < len(w)]
    return [interleaved[r::world_size] for r in range(world_size)]


def no_length() -> TypeError:
    """What ``len()`` of a stream's loader raises: a TypeError, as for any object without a
    length, which ``list()`` and the trainers that ask whether their data has one (Hugging Face's
    ``has_length``, Lightning's ``has_len``) catch."""
    return TypeError(
        "a stream has no length: its samples are packed as its sources are read, so an epoch's "
        "number of steps is known only once it ends. Tell the trainer how many steps to run "
        "instead (Hugging Face Trainer: TrainingArguments(max_steps=N); Lightning: "
        "Trainer(max_steps=N)), or prepare the data (gristmill prepare) and open it with "
        "gristmill.open_dataset: its loader has a length"
    )


def _as_is(item: Any) -> Any:
    return item  # torch would turn the chunks' arrays into tensors, for nothing


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class StreamDataset(torch.utils.data.IterableDataset):
    """This rank's share of a stream's samples, for any ``torch.utils.data.DataLoader``.

    The pieces are dealt to ranks (``deal``), and a rank's pieces to its workers (worker ``w``
    of ``W`` packs pieces ``w, w + W, …`` of them), so every sample comes once across
    ranks × workers. It promises no more: the batches depend on ``num_workers``, ranks may
    serve different numbers of batches, and there is no resume state. For those use
    :func:`gristmill.torch.dataloader` on the stream.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        shuffle: bool = False,
    ):
        self.stream, self.seed, self.shuffle = stream, int(seed), bool(shuffle)
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        mine = deal(
            len(self.stream.pieces),
            self.world_size,
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
        )[self.rank]
        worker, workers = _worker()
        pieces = [piece for piece, _ in mine[worker::workers]]
        yield from self.stream.samples(pieces, StreamStats(self.stream.seq_len))


class _Chunks(torch.utils.data.IterableDataset):
    """The chunks of this rank's remaining pieces, tokenized: worker ``w`` of ``W`` reads the
    ``w``-th, ``w + W``-th… and yields ``(number, chunk)``. Its loader sets ``pieces`` for each
    pass and takes them back once the pass has begun (see ``StreamLoader.__iter__``), so a
    loader rebuilt from its parts gets a clear error."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.pieces: list[int] | None = None

    def __iter__(self) -> Iterator[tuple[int, TokenizedChunk]]:
        if self.pieces is None:
            raise rebuilt_elsewhere()
        return self._read(self.pieces)

    def _read(self, pieces: list[int]) -> Iterator[tuple[int, TokenizedChunk]]:
        worker, workers = _worker()
        chunks = (chunk for piece in pieces for chunk in self.stream.pieces[piece])
        for number, chunk in enumerate(chunks):
            if number % workers == worker:
                yield number, self.stream.read(chunk)


class StreamLoader(torch.utils.data.DataLoader):
    """Batches of a :class:`~gristmill.serve.stream.Stream` for this rank, equal in number on every
    rank, resumable (see :func:`gristmill.torch.dataloader` and this module's docstring)."""

    def __init__(
        self,
        stream: Stream,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
        **options: Any,
    ):
        batch_size = check_int("batch_size", batch_size)
        if options.get("persistent_workers"):
            raise GristmillError(
                "a stream's workers read this epoch's pieces, which change every epoch: "
                "persistent_workers=True would serve stale pieces; leave it off"
            )
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.group = _agreement_group(self.world_size)
        # Not dataset/batch_size/drop_last/collate_fn: torch's DataLoader owns those names and
        # here serves chunks, one at a time, as they are.
        self.stream, self.per_rank, self.drop_last_steps = stream, batch_size, bool(drop_last)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.collate = collate_fn or Collator()
        self.stats = StreamStats(stream.seq_len)
        pieces = len(stream.pieces)
        if pieces < 4 * self.world_size:
            log.warning(
                f"the stream has {pieces} piece(s) for {self.world_size} rank(s): the ranks' "
                "shares differ by up to a piece, and the shorter ones serve repeats at the end "
                "of every epoch; pass a smaller piece_bytes (and chunk_bytes) to stream(), or, "
                "for a Hub dataset, which splits no finer than its files (Parquet: row groups), "
                "more files"
            )
        self.set_epoch(0)
        self._last: np.ndarray | None = None  # every rank's numbers of the step last served
        self.chunks = _Chunks(stream)
        super().__init__(
            self.chunks, batch_size=None, num_workers=num_workers, collate_fn=_as_is, **options
        )

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` from its start (its own order of pieces)."""
        work = deal(
            len(self.stream.pieces),
            self.world_size,
            seed=self.seed,
            epoch=int(epoch),
            shuffle=self.shuffle,
        )
        self._start(int(epoch), 0, work)

    def _start(self, epoch: int, step: int, work: Work) -> None:
        self.epoch, self.step, self.work = epoch, step, work
        # Every rank's place in its list: (item, samples of that item's piece served).
        self.at = [(0, w[0][1] if w else 0) for w in work]

    def remaining(self) -> Work:
        """Every rank's pieces still to serve, the first with the samples already served."""
        rest = []
        for work, (item, served) in zip(self.work, self.at):
            left = [list(entry) for entry in work[item:]]
            if left:
                left[0][1] = served
            rest.append(left)
        return rest

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self._start(epoch, self.step, self.remaining())  # a pass may follow a broken-off one
        mine = self.work[self.rank]
        self.chunks.pieces = [piece for piece, _ in mine]  # before the workers start
        self.stats = StreamStats(self.stream.seq_len)
        # torch's iterator takes the pieces as it starts: the workers' copies, or iter() here.
        samples = self._samples(mine, super().__iter__())
        self.chunks.pieces = None
        spare: dict[str, Any] | None = None  # what a repeat copies: this rank's last sample
        while True:
            batch = list(islice(samples, self.per_rank))
            where = (batch[-1][0], batch[-1][1] + 1) if batch else (len(mine), 0)
            served = [sample for _, _, sample in batch]
            spare = served[-1] if served else spare or self._blank()
            agreed = self._agree(len(batch), where, served, spare)
            real = agreed[:, 0]
            if real.max() == 0 or (self.drop_last_steps and real.min() < self.per_rank):
                break  # the same decision on every rank: they all see the same numbers
            self.step += 1
            self.at = [(int(i), int(k)) for i, k in agreed[:, 1:3].tolist()]
            self._last = agreed
            served += [as_repeat(spare)] * (int(real.max()) - len(served))
            yield self.collate(served)
        if self.epoch == epoch:  # a whole pass: iterating again serves the next epoch
            self.set_epoch(epoch + 1)

    def _samples(
        self, mine: list[list[int]], chunks: Iterator[tuple[int, TokenizedChunk]]
    ) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """This rank's samples with their place: (item, index in its piece, sample)."""
        expected = 0

        def piece_chunks(count: int) -> Iterator[TokenizedChunk]:
            nonlocal expected
            for number, chunk in islice(chunks, count):
                if number != expected:  # torch returns workers' results round-robin, in order
                    raise GristmillError(
                        f"stream chunk {number} arrived where {expected} was due: the "
                        "DataLoader must return worker results in order (in_order=True)"
                    )
                expected += 1
                yield chunk

        for item, (piece, skip) in enumerate(mine):
            served = self.stream.pack(piece_chunks(len(self.stream.pieces[piece])), self.stats)
            for index, sample in enumerate(served):
                if index >= skip:
                    yield item, index, sample

    def _agree(
        self,
        count: int,
        where: tuple[int, int],
        served: list[dict[str, Any]],
        spare: dict[str, Any],
    ) -> np.ndarray:
        """Every rank's numbers, rank by rank: real samples this step, item, samples served in
        it; then for metrics(), the figures of the real samples (``batch_figures``) and the
        tokens and sequences of the sample its repeats copy."""
        figures = [*batch_figures(served), len(spare["input_ids"]), len(spare["seq_lens"])]
        mine = torch.tensor([count, *where, *figures], dtype=torch.int64)
        if self.world_size == 1:
            return mine.numpy()[None]
        gathered = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, mine, group=self.group)
        return torch.stack(gathered).numpy()

    def metrics(self) -> dict[str, int | float]:
        """The packing figures of the step last served, over every rank (their keys and
        meaning: :mod:`gristmill.serve.metrics`). A stream packs as it reads, so no step is
        known before it is served; the figures travel with the numbers the ranks exchange to
        agree on every step (no collective of their own)."""
        if self._last is None:
            raise GristmillError(
                "no batch has been served yet: call metrics() after taking a batch (a stream's "
                "steps are known only as they are served)"
            )
        row = self.stream.seq_len and self.stream.seq_len - (self.stream.labels == "shifted")
        return stream_step([[r[0], *r[3:]] for r in self._last.tolist()], row)

    def __len__(self) -> int:
        raise no_length()

    def _blank(self) -> dict[str, np.ndarray]:
        """A stand-in for a rank that has served nothing yet this pass (two tokens of id 0)."""
        return build_sample(
            [(np.zeros(2, np.int64), None)], restart=self.stream.restart, labels=self.stream.labels
        )

    def state_dict(self) -> dict[str, Any]:
        """Where every rank is (the same on every rank: no collective, save it from rank 0);
        plain values. Resume with ``load_state_dict`` on any world size."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "stream": self.stream.identity,
            "pieces": len(self.stream.pieces),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last_steps,
            "epoch": self.epoch,
            "step": self.step,
            "world_size": self.world_size,
            "batch_size": self.per_rank,
            "remaining": self.remaining(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where ``state`` was taken. With the same world size every rank serves what
        it would have; on another, the remaining pieces are dealt again (each sample once)."""
        refuse_other_runs(
            state,
            self.state_dict(),
            (
                ("stream", "the stream (sources, their sizes, pieces or options)"),
                ("pieces", "pieces"),
                ("seed", "seed"),
                ("shuffle", "shuffle"),
                ("drop_last", "drop_last"),
            ),
            "stream the same sources with the same settings",
        )
        work = [[list(map(int, entry)) for entry in w] for w in state["remaining"]]
        if len(work) != self.world_size:
            work = redeal(work, self.world_size)
        self._start(int(state["epoch"]), int(state["step"]), work)


def _agreement_group(world_size: int) -> Any:
    """The process group ranks agree on steps through: gloo, since the numbers live on the CPU
    (the default group when it is gloo, else a gloo group beside it)."""
    if world_size == 1:
        return None
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise GristmillError(
            f"a stream on {world_size} ranks agrees on every step through torch.distributed: "
            "call torch.distributed.init_process_group first (torchrun sets what it needs)"
        )
    if dist.get_world_size() != world_size:
        raise GristmillError(
            f"world_size {world_size} was passed, but the process group has "
            f"{dist.get_world_size()} ranks"
        )
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
