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

KEYS = (
    "packing/samples",
    "packing/repeats",
    "packing/tokens",
    "packing/loss_tokens",
    "packing/seq_len_mean",
    "packing/seq_len_min",
    "packing/seq_len_max",
    "packing/rank_tokens_min",
    "packing/rank_tokens_max",
    "packing/padding_fraction",
    "packing/docs_per_sample",
)

# A rank's share of a step: the columns of the table :func:`summarize` takes, one row a rank.
COLUMNS = ("samples", "repeats", "tokens", "loss", "sequences", "shortest", "longest", "room")

LOSS_BLOCK = 1024  # samples whose loss masks are read at once


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
    if data.restart:
        # Shifted, a sample's last sequence loses its last token (and goes if that empties it).
        sequences = segments - shifted * (seg_len[bounds[1:] - 1] == 1)
        loss = length - segments  # every segment's first label is -100
    else:
        sequences = (length > shifted).astype(np.int64)
        loss = np.maximum(length - 1, 0)
    if data._masked:
        loss = _masked_loss(data)
    # Shifted labels carry the same loss as unshifted ones: the label dropped is a first one.
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


def step_metrics(
    figures: SampleFigures, indices: np.ndarray, repeats: np.ndarray
) -> dict[str, Any]:
    """The figures of a step from its samples on every rank: ``indices`` and ``repeats``
    (``(world_size, share)``, row ``r`` rank ``r``'s, as
    :meth:`~gristmill.serve.schedule.Schedule.step` gives them)."""
    tokens = figures.tokens[indices]
    rows = figures.rows[indices]
    rows = np.where(rows > 0, rows, tokens.max(initial=0))
    table = np.stack(
        [
            np.full(len(indices), indices.shape[1]),
            repeats.sum(1),
            tokens.sum(1),
            np.where(repeats, 0, figures.loss[indices]).sum(1),
            figures.sequences[indices].sum(1),
            tokens.min(1, initial=np.iinfo(np.int64).max),
            tokens.max(1, initial=0),
            rows.sum(1),
        ],
        1,
    )
    return summarize(table)


def batch_figures(samples: Sequence[Mapping[str, Any]]) -> list[int]:
    """Samples' ``tokens, loss, sequences, shortest, longest`` (the last two 0 when there are
    none), counted from their arrays: the figures a stream's rank sends with each step."""
    lengths = [len(s["input_ids"]) for s in samples]
    loss = sum(int(np.count_nonzero(s["labels"] != IGNORE_INDEX)) for s in samples)
    sequences = sum(len(s["seq_lens"]) for s in samples)
    return [sum(lengths), loss, sequences, min(lengths, default=0), max(lengths, default=0)]


def with_repeats(real: np.ndarray, spare: np.ndarray, size: int, row: int | None) -> np.ndarray:
    """The :data:`COLUMNS` table of a step where every rank's batch has ``size`` samples: rank
    ``r`` served ``real[r]`` samples (columns ``count`` then :func:`batch_figures`' five) and
    filled up with repeats of a spare sample (``spare[r]``: its tokens and sequences).
    ``row``: the tokens of a sample's row (``None``: the step's longest sample)."""
    count, tokens, loss, sequences, shortest, longest = real.T
    repeats = size - count
    spare_tokens, spare_sequences = spare.T
    any_repeat, any_real = repeats > 0, count > 0
    shortest = np.where(any_real, shortest, np.iinfo(np.int64).max)
    shortest = np.where(any_repeat, np.minimum(shortest, spare_tokens), shortest)
    longest = np.where(any_repeat, np.maximum(longest, spare_tokens), longest)
    room = size * (int(longest.max()) if row is None else row)
    return np.stack(
        [
            np.full(len(real), size),
            repeats,
            tokens + repeats * spare_tokens,
            loss,
            sequences + repeats * spare_sequences,
            shortest,
            longest,
            np.full(len(real), room),
        ],
        1,
    )


def summarize(table: np.ndarray) -> dict[str, Any]:
    """:data:`KEYS` from a step's :data:`COLUMNS` table, one row a rank."""
    samples, repeats, tokens, loss, sequences, shortest, longest, room = (
        table[:, k] for k in range(len(COLUMNS))
    )
    n, total, filled = int(samples.sum()), int(tokens.sum()), int(room.sum())
    return {
        "packing/samples": n,
        "packing/repeats": int(repeats.sum()),
        "packing/tokens": total,
        "packing/loss_tokens": int(loss.sum()),
        "packing/seq_len_mean": total / n if n else 0.0,
        "packing/seq_len_min": int(shortest.min()) if n else 0,
        "packing/seq_len_max": int(longest.max()) if n else 0,
        "packing/rank_tokens_min": int(tokens.min()),
        "packing/rank_tokens_max": int(tokens.max()),
        "packing/padding_fraction": 1 - total / filled if filled else 0.0,
        "packing/docs_per_sample": int(sequences.sum()) / n if n else 0.0,
    }
