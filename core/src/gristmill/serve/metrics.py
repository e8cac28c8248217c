"""Packing figures of a step, over every rank: what a trainer logs to see how full its batches are.

A map-style epoch is planned before it is served: the sampler orders it,
:class:`~gristmill.serve.schedule.Schedule` cuts it into every rank's share of every step, and
each sample's figures follow from the pack plan (and, where the split has loss masks, from the
masks). So any rank computes every rank's figures for any step of the epoch, with no
collective. A stream packs as it reads; its loader adds each rank's figures to the numbers the
ranks already exchange to agree on every step (``gristmill.torch.streaming``).

The figures (:data:`KEYS`, plain ints and floats, names a logger takes as they are):

- ``packing/samples``, ``packing/repeats``: samples in the step on all ranks, and how many of
  them are repeats that keep the ranks in step (no loss);
- ``packing/tokens``, ``packing/loss_tokens``: their tokens (``input_ids``, padding excluded),
  and the labels that are not -100;
- ``packing/seq_len_mean``, ``packing/seq_len_min``, ``packing/seq_len_max``: tokens per sample;
- ``packing/rank_tokens_min``, ``packing/rank_tokens_max``: tokens per rank (how evenly the
  step's work is shared);
- ``packing/padding_fraction``: the share of the samples' rows that no token fills, a row being
  ``seq_len`` tokens (one less with shifted labels; without a ``seq_len``, the step's longest
  sample): ``1 -`` the packing efficiency;
- ``packing/docs_per_sample``: sequences per sample, as ``seq_lens`` lists them (documents, or
  pieces of one; one per sample with ``restart=False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from gristmill.serve.dataset import Dataset
from gristmill.serve.mixture import Mixture
from gristmill.serve.samples import IGNORE_INDEX
from gristmill.serve.schedule import Schedule

INT_KEYS = (
    "packing/samples",
    "packing/repeats",
    "packing/tokens",
    "packing/loss_tokens",
    "packing/seq_len_min",
    "packing/seq_len_max",
    "packing/rank_tokens_min",
    "packing/rank_tokens_max",
)
FLOAT_KEYS = ("packing/seq_len_mean", "packing/padding_fraction", "packing/docs_per_sample")
KEYS = INT_KEYS + FLOAT_KEYS

# A rank's share of a planned step: the columns of the table :func:`summarize` takes.
COLUMNS = ("samples", "repeats", "tokens", "loss", "sequences", "shortest", "longest", "room")

LOSS_BLOCK = 1024  # samples whose loss masks are read at once
# Samples whose steps' figures are found together: the array work is per call, not per sample.
STEPS_BLOCK = 1 << 16


class SampleFigures(NamedTuple):
    """Every sample's figures (int64, one value a sample, in ``data[i]`` order): its tokens
    (``input_ids``), sequences (``seq_lens`` entries), labels with loss, and the row it fills
    (0 where there is no ``seq_len``)."""

    tokens: np.ndarray
    sequences: np.ndarray
    loss: np.ndarray
    rows: np.ndarray


def sample_figures(data: Dataset | Mixture) -> SampleFigures:
    """The figures of every sample of ``data``, from the pack plan alone, except the loss of a
    split with loss masks: that reads every mask once, a block of samples at a time."""
    if isinstance(data, Mixture):
        parts = [sample_figures(d) for d in data.datasets]
        return SampleFigures(*(np.concatenate(column) for column in zip(*parts)))
    plan, shifted = data.plan, int(data.labels == "shifted")
    bounds = plan.sample_bounds.astype(np.int64)
    seg_len = plan.seg_len.astype(np.int64)
    segments = np.diff(bounds)
    length = data.sample_lengths()  # tokens before the shift
    # Shifted labels carry as much loss as unshifted ones: the label they drop, a sample's
    # first, has none. Without masks every label has loss but a sequence's first.
    if data.restart:
        # Shifted, a sample's last sequence loses its last token (and goes if that empties it).
        sequences = segments - shifted * (seg_len[bounds[1:] - 1] == 1)
        loss = length - segments
    else:
        sequences = (length > shifted).astype(np.int64)
        loss = np.maximum(length - 1, 0)
    if data._masked:
        loss = _masked_loss(data)
    row = 0 if data.seq_len is None else data.seq_len - shifted
    return SampleFigures(
        np.maximum(length - shifted, 0), sequences, loss, np.full(len(length), row, np.int64)
    )


def _masked_loss(data: Dataset) -> np.ndarray:
    """Labels with loss per sample of a split with loss masks: where the mask is set, but
    never on a sequence's first token (every segment's with ``restart``, else the sample's)."""
    plan = data.plan
    bounds = plan.sample_bounds.astype(np.int64)
    out = np.zeros(len(plan), np.int64)
    for lo in range(0, len(plan), LOSS_BLOCK):
        hi = min(lo + LOSS_BLOCK, len(plan))
        seg = slice(bounds[lo], bounds[hi])
        seg_len = plan.seg_len[seg].astype(np.int64)
        _, mask = data._spans(plan.seg_doc[seg], plan.seg_start[seg], seg_len)
        loss = np.ones(int(seg_len.sum()), bool) if mask is None else mask != 0
        starts = np.cumsum(seg_len) - seg_len
        firsts = starts[bounds[lo:hi] - bounds[lo]]  # every sample's first token
        loss[starts if data.restart else firsts] = False
        total = np.concatenate([[0], np.cumsum(loss)])
        out[lo:hi] = total[np.append(firsts[1:], len(loss))] - total[firsts]
    return out


class Steps(NamedTuple):
    """The figures of consecutive steps, a row a step: the values of :data:`INT_KEYS` and of
    :data:`FLOAT_KEYS`, as Python lists (a step's dict is then made without numpy calls)."""

    ints: list[list[int]]
    floats: list[list[float]]

    def of(self, k: int) -> dict[str, int | float]:
        """Step ``k``'s figures (of these steps)."""
        return dict(zip(KEYS, [*self.ints[k], *self.floats[k]]))


class PlannedMetrics:
    """The figures of any step of a planned epoch, from its
    :class:`~gristmill.serve.schedule.Schedule` and every sample's figures (found at the first
    call), a block of steps at a time."""

    def __init__(self, data: Dataset | Mixture):
        self.data = data
        self.figures: SampleFigures | None = None
        self.block: tuple[Schedule, range, Steps] | None = None

    def step(self, schedule: Schedule, step: int) -> dict[str, int | float]:
        """The figures of step ``step`` of ``schedule``'s epoch."""
        block = self.block
        if block is None or block[0] is not schedule or step not in block[1]:
            if self.figures is None:
                self.figures = sample_figures(self.data)
            per = max(1, STEPS_BLOCK // schedule.global_batch)
            steps = range(step - step % per, min(step - step % per + per, schedule.steps))
            indices, repeats, counts = schedule.everyone(steps)
            table = planned_steps(self.figures, indices, repeats, counts, schedule.world_size)
            self.block = block = (schedule, steps, table)
        return block[2].of(step - block[1].start)


def planned_steps(
    figures: SampleFigures,
    indices: np.ndarray,
    repeats: np.ndarray,
    counts: list[int],
    world_size: int,
) -> Steps:
    """The figures of consecutive steps from their samples on every rank, as
    :meth:`~gristmill.serve.schedule.Schedule.everyone` gives them."""
    shares = np.asarray(counts, np.int64)
    sizes = shares * world_size  # samples a step
    step_at = np.cumsum(sizes) - sizes
    rank_at = (step_at[:, None] + np.arange(world_size) * shares[:, None]).reshape(-1)
    tokens = figures.tokens[indices]
    rows = figures.rows[indices]
    if not rows.all():  # no seq_len: a row is the step's longest sample
        longest = np.repeat(np.maximum.reduceat(tokens, step_at), sizes)
        rows = np.where(rows > 0, rows, longest)
    columns = [
        np.repeat(shares, world_size),
        np.add.reduceat(repeats.astype(np.int64), rank_at),
        np.add.reduceat(tokens, rank_at),
        np.add.reduceat(np.where(repeats, 0, figures.loss[indices]), rank_at),
        np.add.reduceat(figures.sequences[indices], rank_at),
        np.minimum.reduceat(tokens, rank_at),
        np.maximum.reduceat(tokens, rank_at),
        np.add.reduceat(rows, rank_at),
    ]
    return summarize(np.stack(columns, 1).reshape(len(shares), world_size, len(COLUMNS)))


def batch_figures(samples: Sequence[Mapping[str, Any]]) -> list[int]:
    """Samples' ``tokens, loss, sequences, shortest, longest`` (the last two 0 when there are
    none), counted from their arrays: the figures a stream's rank sends with each step."""
    lengths = [len(s["input_ids"]) for s in samples]
    loss = sum(int(np.count_nonzero(s["labels"] != IGNORE_INDEX)) for s in samples)
    sequences = sum(len(s["seq_lens"]) for s in samples)
    return [sum(lengths), loss, sequences, min(lengths, default=0), max(lengths, default=0)]


def stream_step(ranks: list[list[int]], row: int | None) -> dict[str, int | float]:
    """The figures of a stream's step from every rank's numbers: its real samples,
    :func:`batch_figures`' five, and the tokens and sequences of the sample its repeats copy
    (every rank's batch is filled up to the fullest's size with such repeats). ``row``: a
    sample's row (``None``: the step's longest sample). In plain Python, which for a few
    numbers a rank costs less than numpy calls."""
    size = max(rank[0] for rank in ranks)
    repeated = loss_tokens = sequences = 0
    per_rank: list[int] = []  # tokens
    lengths: list[int] = []  # every rank's shortest and longest sample
    for count, tokens, loss, rank_sequences, shortest, longest, spare, spare_seqs in ranks:
        repeats = size - count
        if repeats:
            tokens += repeats * spare
            rank_sequences += repeats * spare_seqs
            shortest = min(shortest, spare) if count else spare
            longest = max(longest, spare)
        repeated += repeats
        loss_tokens += loss
        sequences += rank_sequences
        per_rank.append(tokens)
        lengths += (shortest, longest)
    n, total = size * len(ranks), sum(per_rank)
    filled = n * (max(lengths) if row is None else row)
    ints = [n, repeated, total, loss_tokens, min(lengths), max(lengths)]
    floats = [total / n, (filled - total) / filled if filled else 0.0, sequences / n]
    return dict(zip(KEYS, [*ints, min(per_rank), max(per_rank), *floats]))


def summarize(table: np.ndarray) -> Steps:
    """The figures of planned steps from their :data:`COLUMNS` tables, ``(steps, ranks,
    columns)`` (as :func:`stream_step` finds them for a stream's step)."""
    samples, repeats, tokens, loss, sequences, shortest, longest, room = np.moveaxis(table, 2, 0)
    n, total, filled = samples.sum(1), tokens.sum(1), room.sum(1)
    ints = [n, repeats.sum(1), total, loss.sum(1)]
    ints += [shortest.min(1), longest.max(1), tokens.min(1), tokens.max(1)]
    floats = np.zeros((len(table), len(FLOAT_KEYS)))
    np.divide(total, n, out=floats[:, 0], where=n > 0)
    np.divide(filled - total, filled, out=floats[:, 1], where=filled > 0)
    np.divide(sequences.sum(1), n, out=floats[:, 2], where=n > 0)
    return Steps(np.stack(ints, 1).tolist(), floats.tolist())
