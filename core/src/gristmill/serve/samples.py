"""The sample contract: document segments → ``input_ids``, ``labels``, ``position_ids``, ``seq_lens``.

One function, :func:`build_samples`, defines a sample for map-style datasets (a batch at a time)
and streams (one at a time, through :func:`build_sample`), so both give exactly the same samples.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from itertools import accumulate, pairwise
from typing import overload

import numpy as np

from gristmill.errors import DatasetError
from gristmill.options import LABELS

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips

Part = tuple[np.ndarray, "np.ndarray | None"]  # a segment's token ids and loss mask (None: all)


def check_labels(labels: str) -> str:
    if labels not in LABELS:
        raise DatasetError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    return labels


def join_parts(parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Segments as :func:`build_samples` takes them: their tokens and loss masks concatenated
    (``None`` when no segment has a mask) and their lengths."""
    tokens = np.concatenate([ids for ids, _ in parts])
    lengths = np.array([len(ids) for ids, _ in parts], np.int64)
    if all(mask is None for _, mask in parts):
        return tokens, None, lengths
    mask = np.concatenate([np.ones(len(ids), np.uint8) if m is None else m for ids, m in parts])
    return tokens, mask, lengths


def build_sample(
    parts: Sequence[Part], *, restart: bool = True, labels: str = "unshifted"
) -> dict[str, np.ndarray]:
    """A sample from its segments, in order (see :func:`build_samples`)."""
    tokens, mask, lengths = join_parts(parts)
    return build_samples(tokens, mask, lengths, [len(parts)], restart=restart, labels=labels)[0]


def build_samples(
    tokens: np.ndarray,
    mask: np.ndarray | None,
    seg_lens: np.ndarray,
    segments: Sequence[int] | np.ndarray,
    *,
    restart: bool = True,
    labels: str = "unshifted",
    buffers: Buffers | None = None,
) -> SampleBatch:
    """Samples from their segments: ``tokens`` (and the loss ``mask``, nonzero where a token
    carries loss; ``None``: every token does) of every segment of every sample, concatenated;
    ``seg_lens``, each segment's length; ``segments``, how many segments each sample has (one
    or more).

    ``labels`` holds the token id where it carries loss, else -100; with ``restart`` every
    segment is its own sequence: ``position_ids`` restart at 0 and the segment's first label is
    -100, so no position learns to predict across a document boundary when the model shifts
    labels, and ``seq_lens`` lists the segments' lengths. Without ``restart`` the sample is one
    sequence (``seq_lens`` is its length).

    ``labels="shifted"``: ``input_ids`` are the tokens but the last, and ``labels[j]`` is the
    target of position ``j`` (the next token, or -100); ``position_ids`` and ``seq_lens`` follow
    ``input_ids``.

    A few array operations build the whole batch (a :class:`SampleBatch`); only the cut into
    samples runs once per sample, and only when a sample is asked for. Its buffer comes from
    ``buffers`` when given (see :class:`Buffers`).
    """
    seg_lens = np.asarray(seg_lens, np.int64)
    ends = seg_lens.cumsum()
    # Where every sample's segments and tokens begin, then the ends: a few numbers a sample, kept
    # in Python lists (a numpy call costs more than the arithmetic on them).
    seg_at = list(accumulate(np.asarray(segments).tolist(), initial=0))
    ends_at = ends.tolist()
    token_at = [ends_at[k - 1] if k else 0 for k in seg_at]
    if restart:
        seq_lens, seq_at, starts = seg_lens, seg_at, ends - seg_lens
    else:
        seq_lens, seq_at = np.diff(token_at), list(range(len(token_at)))
        starts = np.array(token_at[:-1], np.int64)
    firsts = starts[seq_lens > 0]
    shift = labels == "shifted"
    if shift:
        # A sample's last token is only ever a target: its last sequence loses it (and goes if
        # that empties it).
        counts = seq_lens.tolist()
        for last in seq_at[1:]:
            counts[last - 1] -= 1
        kept = [[n for n in counts[a:b] if n > 0] for a, b in pairwise(seq_at)]
        out_lens = [n for sample in kept for n in sample]
        out_seq_at = list(accumulate(map(len, kept), initial=0))
        # Sample k keeps its tokens but the last as inputs and but the first as labels.
        out_at = [max(0, hi - lo - 1) for lo, hi in pairwise(token_at)]
        out_at = list(accumulate(out_at, initial=0))
    else:
        out_lens, out_seq_at, out_at = seq_lens, seq_at, token_at
    width, count, samples = out_at[-1], len(out_lens), len(out_at) - 1
    # One buffer for the batch: the collator hands it on as one tensor storage. It ends with
    # room for the cu_seqlens of every batch cut from this one (see SampleBatch.seq_starts).
    size = 3 * width + count + (count + samples + 1) // 2
    flat = buffers.take(size) if buffers is not None else np.empty(size, np.int64)
    input_ids, label_ids, position_ids = (
        flat[:width],
        flat[width : 2 * width],
        flat[2 * width : 3 * width],
    )
    flat[3 * width : 3 * width + count] = out_lens
    full = len(tokens)
    if shift:  # build unshifted first, then drop each sample's last input and first label
        ids, lab, pos = np.empty((3, full), np.int64)
    else:
        ids, lab, pos = input_ids, label_ids, position_ids
    ids[:] = tokens
    lab[:] = ids
    if mask is not None:
        lab[mask == 0] = IGNORE_INDEX
    lab[firsts] = IGNORE_INDEX
    count_up(pos, seq_lens.tolist())
    if shift:
        last = np.zeros(full, bool)
        last[[hi - 1 for lo, hi in pairwise(token_at) if hi > lo]] = True
        first = np.zeros(full, bool)
        first[[lo for lo, hi in pairwise(token_at) if hi > lo]] = True
        input_ids[:] = ids[~last]
        position_ids[:] = pos[~last]
        label_ids[:] = lab[~first]
    return SampleBatch(flat, width, list(out_at), list(out_seq_at))


def carry_no_loss(
    mask: np.ndarray | None,
    seg_lens: np.ndarray,
    segments: Sequence[int] | np.ndarray,
    *,
    restart: bool = True,
) -> np.ndarray:
    """Which samples :func:`build_samples` would give every label -100 (bool per sample), from
    the same ``mask``, ``seg_lens`` and ``segments`` without building them: a label carries loss
    where the mask does, but never on the first token of a sequence (every segment with
    ``restart``, else every sample). Shifted labels carry the same loss, one place earlier."""
    seg_lens = np.asarray(seg_lens, np.int64)
    segments = np.asarray(segments, np.int64)
    if not len(segments):
        return np.zeros(0, bool)
    seg_at = np.cumsum(segments) - segments  # every sample's first segment
    if mask is None:  # every token carries loss but the first of each sequence
        if restart:
            return ~np.logical_or.reduceat(seg_lens > 1, seg_at)
        return np.add.reduceat(seg_lens, seg_at) < 2
    loss = mask != 0
    starts = np.cumsum(seg_lens) - seg_lens
    loss[starts if restart else starts[seg_at]] = False
    return ~np.logical_or.reduceat(loss, starts[seg_at])


def count_up(positions: np.ndarray, lengths: list[int]) -> None:
    """Fill ``positions`` (int64, contiguous) with 0, 1, … restarting at every sequence of
    ``lengths``, which add up to its size: each sequence a copy of the start of one counting
    array, a memory copy where a running sum is a loop over every token."""
    counting = _counting(max(lengths, default=0))
    out = memoryview(positions).cast("B")
    at = 0
    for n in lengths:
        end = at + 8 * n
        out[at:end] = counting[: 8 * n]
        at = end


_COUNTING = memoryview(np.arange(4096, dtype=np.int64)).cast("B")


def _counting(size: int) -> memoryview:
    """0, 1, … as int64 bytes, at least ``size`` of them (kept for the next call)."""
    global _COUNTING
    counting = _COUNTING  # one read: another thread may replace it meanwhile
    if len(counting) < 8 * size:
        counting = _COUNTING = memoryview(np.arange(2 * size, dtype=np.int64)).cast("B")
    return counting


class Buffers:
    """int64 buffers handed out again once nothing uses them any more.

    A batch of 8 × 2048 tokens needs 400 KB; fresh memory of that size comes from the kernel,
    zeroed a page at a time, which costs as much as building the batch. A buffer is free again
    when no array or tensor refers to it (its reference count, which every view of it holds):
    whatever the caller keeps stays untouched.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self.pool: list[np.ndarray] = []
        self.lock = threading.Lock()

    def take(self, size: int) -> np.ndarray:
        """``size`` int64 values, uninitialised."""
        with self.lock:
            pool = self.pool
            for k in range(len(pool)):
                # Two references (the pool's and the call's argument): nothing else holds it.
                if sys.getrefcount(pool[k]) == 2:
                    if len(pool[k]) < size:
                        pool[k] = _room_for(size)
                    return pool[k][:size]
            buffer = _room_for(size)
            if len(pool) < self.keep:
                pool.append(buffer)
            return buffer[:size]


def _room_for(size: int) -> np.ndarray:
    # Room for a batch somewhat larger than this one: batch sizes vary a little.
    return np.empty(size + size // 4, np.int64)


class SampleBatch(Sequence[dict[str, np.ndarray]]):
    """Samples built together: a sequence of sample dicts over arrays of the whole batch.

    ``flat`` is one int64 buffer: ``input_ids``, ``labels`` and ``position_ids`` of every
    sample concatenated (``width`` values each, in that order), then every sample's sequence
    lengths. Sample ``k`` is values ``bounds[k]:bounds[k + 1]`` of the first three and
    ``seq_bounds[k]:seq_bounds[k + 1]`` of the lengths; ``first`` is its first sample's place
    in the batch that ``flat`` was built for, and ``flat`` ends with room for the ``cu_seqlens``
    of every batch cut from that one (:meth:`seq_starts`). ``batch[k]`` is it as a dict of views
    (with ``repeat: True`` for a sample in ``repeats``); ``split(sizes)`` cuts the batch into
    smaller ones over the same buffer; a collator that knows this class takes the arrays whole.
    """

    def __init__(
        self,
        flat: np.ndarray,
        width: int,
        bounds: list[int],
        seq_bounds: list[int],
        repeats: frozenset[int] = frozenset(),
        first: int = 0,
    ):
        self.flat, self.width = flat, width
        self.bounds, self.seq_bounds, self.repeats = bounds, seq_bounds, repeats
        self.first = first

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``input_ids``, ``labels``, ``position_ids`` and ``seq_lens`` of these samples, each
        concatenated: views of ``flat``."""
        lo, hi = self.bounds[0], self.bounds[-1]
        rows = self.flat[: 3 * self.width].reshape(3, self.width)[:, lo:hi]
        lens = self.flat[3 * self.width + self.seq_bounds[0] : 3 * self.width + self.seq_bounds[-1]]
        return rows[0], rows[1], rows[2], lens

    def seq_starts(self, sizes: Sequence[int] | None = None) -> int:
        """Write the ``cu_seqlens`` of this batch (where each of its sequences starts, then
        their total; int32), or of its consecutive batches of ``sizes`` samples one after
        another, into the room at the end of ``flat``, and return where they begin in ``flat``
        viewed as int32: a padding-free batch is then one block of memory, which a DataLoader
        worker hands over at half the cost of two.

        A batch of samples ``[k0, k1)`` with sequences ``[s0, s1)`` of the whole batch writes
        from int32 ``E - s1 - k1`` on, ``E`` the end of ``flat``: ``s1 - s0`` values and one
        more per batch, so within ``[E - s1 - k1, E - s0 - k0)``, which no batch cut from the
        samples before or after its own reaches, and all of them fit in the room."""
        sizes = [len(self)] if sizes is None else sizes
        s0, s1 = self.seq_bounds[0], self.seq_bounds[-1]
        lens = self.flat[3 * self.width + s0 : 3 * self.width + s1]
        total = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=total[1:])
        # Batch b's values are total[f_b : f_(b+1) + 1] - total[f_b], f_b its first sequence.
        firsts = np.array([self.seq_bounds[k] - s0 for k in accumulate(sizes, initial=0)])
        batch_of = np.repeat(np.arange(len(sizes)), np.diff(firsts) + 1)
        at = 2 * len(self.flat) - s1 - (self.first + len(self))
        room = self.flat.view(np.int32)[at : at + len(batch_of)]
        np.subtract(
            total[np.arange(len(batch_of)) - batch_of],
            total[firsts[batch_of]],
            out=room,
            casting="unsafe",
        )
        return at

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @overload
    def __getitem__(self, k: int) -> dict[str, np.ndarray]: ...
    @overload
    def __getitem__(self, k: slice) -> list[dict[str, np.ndarray]]: ...

    def __getitem__(self, k: int | slice) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"sample {k} out of range for a batch of {n}")
        k %= n
        lo, hi = self.bounds[k], self.bounds[k + 1]
        rows = self.flat[: 3 * self.width].reshape(3, self.width)[:, lo:hi]
        seq_at = 3 * self.width
        sample = {
            "input_ids": rows[0],
            "labels": rows[1],
            "position_ids": rows[2],
            "seq_lens": self.flat[seq_at + self.seq_bounds[k] : seq_at + self.seq_bounds[k + 1]],
        }
        if k in self.repeats:
            sample["repeat"] = True
        return sample

    def cuts(self, sizes: Iterable[int]) -> list[int]:
        """Where consecutive batches of ``sizes`` samples each begin, then ``len(self)``, where
        the last ends: the sizes must add up to it."""
        at = list(accumulate(sizes, initial=0))
        if at[-1] != len(self):
            raise ValueError(f"sizes add up to {at[-1]}, not to the batch's {len(self)} samples")
        return at

    def repeats_in(self, start: int, end: int) -> frozenset[int]:
        """The places of the repeats among samples ``[start, end)``, counted from ``start``."""
        return frozenset(k - start for k in self.repeats if start <= k < end)

    def split(self, sizes: Iterable[int]) -> list[SampleBatch]:
        """Consecutive batches of ``sizes`` samples each (adding up to ``len(self)``)."""
        return [
            SampleBatch(
                self.flat,
                self.width,
                self.bounds[a : b + 1],
                self.seq_bounds[a : b + 1],
                self.repeats_in(a, b),
                self.first + a,
            )
            for a, b in pairwise(self.cuts(sizes))
        ]

    def with_repeats(self, repeats: Iterable[int]) -> SampleBatch:
        """The same samples, those in ``repeats`` marked as served again to keep ranks in step:
        their labels all -100, and ``repeat`` set (see :func:`gristmill.torch.ranks.as_repeat`)."""
        marked = frozenset(repeats) | self.repeats
        flat = self.flat.copy()
        batch = SampleBatch(flat, self.width, self.bounds, self.seq_bounds, marked, self.first)
        labels = batch.flat[self.width : 2 * self.width]
        for k in marked:
            labels[self.bounds[k] : self.bounds[k + 1]] = IGNORE_INDEX
        return batch
