"""The sample contract: document segments → ``input_ids``, ``labels``, ``position_ids``, ``seq_lens``.

:func:`build_samples` defines a sample for map-style datasets (a batch at a time);
:func:`build_sample` builds one sample alone (``ds[i]``, streams) straight into its arrays, as a
batch's machinery costs more than one sample's tokens. tests/serve/test_samples.py holds the two
to each other on any segments, so both give exactly the same samples.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, pairwise
from typing import Any, NamedTuple, Protocol, overload

import numpy as np

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
ROWS = ("input_ids", "labels", "position_ids")  # a token's values: the rows of a SampleBatch

Part = tuple[np.ndarray, "np.ndarray | None"]  # a segment's token ids and loss mask (None: all)


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
    parts: Sequence[Part],
    *,
    restart: bool = True,
    labels: str = "unshifted",
    buffers: Buffers | None = None,
) -> dict[str, np.ndarray]:
    """A sample from its segments, in order: what :func:`build_samples` gives for them."""
    sample = unshifted_sample(parts, restart=restart, buffers=buffers)
    return shift_sample(sample) if labels == "shifted" else sample


def unshifted_sample(
    parts: Sequence[Part], *, restart: bool = True, buffers: Buffers | None = None
) -> dict[str, np.ndarray]:
    """The unshifted sample of ``parts`` (see :func:`build_samples`), its arrays views of one
    int64 buffer (from ``buffers`` when given): each segment's ids copied into place, its mask
    applied to its own labels, no array as long as the sample made on the way."""
    lengths = [len(ids) for ids, _ in parts]
    total = sum(lengths)
    seq_lens = lengths if restart else [total]
    buffer = (buffers.take if buffers is not None else _exactly)(3 * total + len(seq_lens))
    ids, labels = buffer[:total], buffer[total : 2 * total]
    positions, out = buffer[2 * total : 3 * total], buffer[3 * total : 3 * total + len(seq_lens)]
    if parts:
        np.concatenate([tokens for tokens, _ in parts], out=ids, casting="safe")
    labels[:] = ids
    masks = [mask for _, mask in parts]
    if any(mask is not None for mask in masks):
        np.putmask(labels, _joined(masks, lengths, total) == 0, IGNORE_INDEX)
    at = 0
    for n in seq_lens:  # the first label of every sequence
        if n:
            labels[at] = IGNORE_INDEX
        at += n
    count_up(positions, seq_lens)
    out[:] = seq_lens
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lens": out}


def _joined(masks: list[np.ndarray | None], lengths: list[int], total: int) -> np.ndarray:
    """One sample's segments' loss masks, one after another (ones for a segment without)."""
    if len(masks) == 1 and masks[0] is not None:
        return masks[0]
    joined, at = np.empty(total, np.uint8), 0
    for mask, n in zip(masks, lengths):
        joined[at : at + n] = 1 if mask is None else mask
        at += n
    return joined


def shift_sample(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An unshifted sample as ``labels="shifted"`` serves it: its inputs but the last and its
    labels but the first (views), its last sequence one shorter (and gone if that empties it)."""
    counts = sample["seq_lens"].tolist()
    if counts:
        counts[-1] -= 1
    kept = [n for n in counts if n > 0]
    seq_lens = sample["seq_lens"][: len(kept)]
    seq_lens[:] = kept
    ids, labels, positions = sample["input_ids"], sample["labels"], sample["position_ids"]
    if len(ids):
        ids, labels, positions = ids[:-1], labels[1:], positions[:-1]
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lens": seq_lens}


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
    samples runs once per sample, and only when a sample is asked for. Its arrays share one
    buffer, from ``buffers`` when given (see :class:`Buffers`).
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
    unshifted = _Cut(token_at, seq_at, seq_lens.tolist(), starts[seq_lens > 0])
    take = buffers.take if buffers is not None else _exactly
    if labels == "shifted":
        return _shifted(tokens, mask, unshifted, take)
    rows, out_lens, spare = _arrays(take, token_at[-1], seq_lens)
    _fill(rows, tokens, mask, unshifted)
    return SampleBatch(rows, out_lens, token_at, seq_at, spare=spare)


class _Cut(NamedTuple):
    """Where a batch's samples begin in its tokens, then their end (``token_at``), and in its
    sequences (``seq_at``); its sequences' lengths; and the first token of each that has one."""

    token_at: list[int]
    seq_at: list[int]
    seq_lens: list[int]
    firsts: np.ndarray


def _arrays(
    take: Callable[[int], np.ndarray], width: int, seq_lens: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch's ``(3, width)`` rows (see :data:`ROWS`; uninitialised) and its ``seq_lens``, in
    one int64 buffer of at least their size from ``take``; and the rest of that buffer."""
    size = 3 * width + len(seq_lens)
    buffer = take(size)
    buffer[3 * width : size] = seq_lens
    return buffer[: 3 * width].reshape(3, width), buffer[3 * width : size], buffer[size:]


def _exactly(size: int) -> np.ndarray:
    return np.empty(size, np.int64)


def _fill(rows: np.ndarray, tokens: np.ndarray, mask: np.ndarray | None, cut: _Cut) -> None:
    """The unshifted samples of ``cut`` into ``rows`` (contiguous, one column a token)."""
    ids, labels, positions = rows
    ids[:] = tokens
    labels[:] = ids
    if mask is not None:
        np.putmask(labels, mask == 0, IGNORE_INDEX)
    labels[cut.firsts] = IGNORE_INDEX
    count_up(positions, cut.seq_lens)


def _shifted(
    tokens: np.ndarray, mask: np.ndarray | None, cut: _Cut, take: Callable[[int], np.ndarray]
) -> SampleBatch:
    """The shifted samples of ``cut``: built unshifted first, then every sample's last input
    and first label dropped."""
    # A sample's last token is only ever a target: its last sequence loses it (and goes if
    # that empties it).
    counts = list(cut.seq_lens)
    for last in cut.seq_at[1:]:
        counts[last - 1] -= 1
    kept = [[n for n in counts[a:b] if n > 0] for a, b in pairwise(cut.seq_at)]
    seq_at = list(accumulate(map(len, kept), initial=0))
    # Sample k keeps its tokens but the last as inputs and but the first as labels.
    spans = [(lo, hi) for lo, hi in pairwise(cut.token_at) if hi > lo]
    token_at = list(
        accumulate((max(0, hi - lo - 1) for lo, hi in pairwise(cut.token_at)), initial=0)
    )
    full = np.empty((3, len(tokens)), np.int64)
    _fill(full, tokens, mask, cut)
    inputs = np.ones(len(tokens), bool)
    inputs[[hi - 1 for _, hi in spans]] = False
    targets = np.ones(len(tokens), bool)
    targets[[lo for lo, _ in spans]] = False
    rows, seq_lens, spare = _arrays(take, token_at[-1], [n for sample in kept for n in sample])
    rows[0] = full[0][inputs]
    rows[1] = full[1][targets]
    rows[2] = full[2][inputs]
    return SampleBatch(rows, seq_lens, token_at, seq_at, spare=spare)


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


def runs_no_loss(
    runs: np.ndarray,
    begins: np.ndarray,
    seg_lens: np.ndarray,
    segments: Sequence[int] | np.ndarray,
    *,
    restart: bool = True,
) -> np.ndarray:
    """:func:`carry_no_loss`'s answer from the runs of loss tokens of a loss index
    (:mod:`gristmill.store.index`) instead of the mask: every segment starts at token
    ``begins[k]`` of the token stream the runs count in, and carries loss where it meets a run,
    its first token aside where a sequence starts there."""
    seg_lens = np.asarray(seg_lens, np.int64)
    segments = np.asarray(segments, np.int64)
    if not len(segments):
        return np.zeros(0, bool)
    seg_at = np.cumsum(segments) - segments  # every sample's first segment
    skip = np.ones(len(seg_lens), np.int64)
    if not restart:
        skip[:] = 0
        skip[seg_at] = 1
    begins = np.asarray(begins, np.int64)
    hit = runs_hit(runs, begins + skip, begins + seg_lens)
    return ~np.logical_or.reduceat(hit, seg_at)


def runs_hit(runs: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether tokens ``starts[k]`` to ``ends[k]`` (excluded) meet a run of ``runs`` (bool per
    ``k``): the first run ending after ``starts[k]`` begins before ``ends[k]``."""
    first = np.searchsorted(runs[:, 1], starts, side="right")
    begins = np.append(runs[:, 0], np.iinfo(np.int64).max)  # past the last run: none
    return (begins[first] < ends) & (starts < ends)


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
        """A buffer of ``size`` int64 values and a quarter as many to spare (at least),
        uninitialised."""
        with self.lock:
            pool = self.pool
            for k in range(len(pool)):
                # Two references (the pool's and the call's argument): nothing else holds it.
                if sys.getrefcount(pool[k]) == 2:
                    if len(pool[k]) < size + size // 4:
                        pool[k] = _room_for(size)
                    return pool[k]
            buffer = _room_for(size)
            if len(pool) < self.keep:
                pool.append(buffer)
            return buffer


def _room_for(size: int) -> np.ndarray:
    # Room to spare beside a batch (SampleBatch.spare), and for a later batch somewhat larger
    # than this one (batch sizes vary a little).
    return np.empty(size + size // 2, np.int64)


class MetadataReader(Protocol):
    """Where a batch's segments find their documents' metadata
    (:class:`gristmill.serve.metadata.DocumentMetadata`)."""

    columns: dict[str, str]

    def values(self, key: str, docs: np.ndarray) -> np.ndarray: ...

    def decode(self, key: str, values: np.ndarray) -> list[Any]: ...


class Segments(NamedTuple):
    """The documents a batch's samples are made of: ``docs``, the document (its index in the
    split) of every segment, sample after sample, as the pack plan lists them, and ``lengths``,
    its tokens; ``at``, where each sample's segments begin in ``docs``, then the end;
    ``metadata``, the documents' metadata; ``served``, the metadata keys each sample dict
    carries (``segment_metadata``)."""

    docs: np.ndarray
    lengths: np.ndarray
    at: list[int]
    metadata: MetadataReader
    served: tuple[str, ...] = ()

    def of(self, a: int, b: int) -> Segments:
        """Those of samples ``a`` to ``b`` (excluded), over the same array."""
        return self._replace(at=self.at[a : b + 1])


class SampleBatch(Sequence[dict[str, np.ndarray]]):
    """Samples built together: a sequence of sample dicts, over arrays of the whole batch.

    ``rows`` is ``(3, tokens)`` int64: the ``input_ids``, ``labels`` and ``position_ids`` of every
    sample, concatenated (:data:`ROWS`; also :attr:`input_ids`, :attr:`labels` and
    :attr:`position_ids`); ``seq_lens`` is every sample's sequence lengths, concatenated.
    :meth:`lengths` gives each sample's tokens, :meth:`rows_of` and :meth:`seq_lens_of` a sample's
    part of both (views). ``batch[k]`` is sample ``k`` as a dict of views (with ``repeat: True``
    for a sample in ``repeats``); :meth:`split` cuts the batch into smaller ones over the same
    arrays; a consumer that knows this class takes the arrays whole.

    Made from ``rows`` and ``seq_lens`` that hold sample ``k`` at columns ``bounds[k]`` to
    ``bounds[k + 1]`` and values ``seq_bounds[k]`` to ``seq_bounds[k + 1]`` (what lies outside
    belongs to other batches cut from the same arrays), and the ``spare`` memory of the buffer
    they share (:meth:`spare`).

    A dataset's batch also knows its ``segments`` (:class:`Segments`): :meth:`documents_of`
    gives the documents of a sample's segments, :meth:`metadata_of` their metadata.
    """

    __slots__ = ("_at", "_rows", "_seq_at", "_seq_lens", "_spare", "repeats", "segments")

    def __init__(
        self,
        rows: np.ndarray,
        seq_lens: np.ndarray,
        bounds: list[int],
        seq_bounds: list[int],
        repeats: frozenset[int] = frozenset(),
        spare: np.ndarray | None = None,
        segments: Segments | None = None,
    ):
        self._rows, self._seq_lens, self._spare = rows, seq_lens, spare
        self._at, self._seq_at, self.repeats = bounds, seq_bounds, repeats
        self.segments = segments

    def spare(self) -> np.ndarray | None:
        """The memory of the buffer that this batch's arrays share beyond them (int64,
        uninitialised; ``None`` where there is none), to the first caller only: a consumer that
        makes arrays of its own beside them keeps the batch one block of memory, which a
        DataLoader worker hands over at once. A batch cut from another (:meth:`split`) has
        none."""
        spare, self._spare = self._spare, None
        return spare

    @property
    def rows(self) -> np.ndarray:
        return self._rows[:, self._at[0] : self._at[-1]]

    @property
    def seq_lens(self) -> np.ndarray:
        return self._seq_lens[self._seq_at[0] : self._seq_at[-1]]

    @property
    def input_ids(self) -> np.ndarray:
        return self._rows[0, self._at[0] : self._at[-1]]

    @property
    def labels(self) -> np.ndarray:
        return self._rows[1, self._at[0] : self._at[-1]]

    @property
    def position_ids(self) -> np.ndarray:
        return self._rows[2, self._at[0] : self._at[-1]]

    @property
    def num_tokens(self) -> int:
        return self._at[-1] - self._at[0]

    @property
    def num_sequences(self) -> int:
        return self._seq_at[-1] - self._seq_at[0]

    def lengths(self) -> list[int]:
        """Each sample's tokens."""
        return [hi - lo for lo, hi in pairwise(self._at)]

    def rows_of(self, k: int) -> np.ndarray:
        """Sample ``k``'s ``(3, tokens)`` rows."""
        return self._rows[:, self._at[k] : self._at[k + 1]]

    def seq_lens_of(self, k: int) -> np.ndarray:
        """Sample ``k``'s sequence lengths."""
        return self._seq_lens[self._seq_at[k] : self._seq_at[k + 1]]

    def documents_of(self, k: int) -> np.ndarray:
        """The documents (their indices in the split) of sample ``k``'s segments, in order."""
        segments = self._segments()
        return segments.docs[segments.at[k] : segments.at[k + 1]]

    def metadata_of(
        self, k: int, keys: Iterable[str] | None = None, *, decode: bool = False
    ) -> dict[str, Any]:
        """The metadata of sample ``k``'s segments' documents: for each of ``keys`` (default:
        every column), an array aligned with :meth:`documents_of` of the stored values (int32
        codes for strings: see :meth:`gristmill.serve.metadata.DocumentMetadata.values`), or
        with ``decode`` a list of Python values (``None`` for null)."""
        reader = self._segments().metadata
        docs = self.documents_of(k)
        found = {}
        for key in reader.columns if keys is None else keys:
            values = reader.values(key, docs)
            found[key] = reader.decode(key, values) if decode else values
        return found

    def metadata_per_token(self, k: int, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """For each of ``keys``, the stored value (see :meth:`metadata_of`) of the document of
        each of sample ``k``'s tokens: arrays aligned with its ``input_ids``."""
        segments = self._segments()
        lengths = segments.lengths[segments.at[k] : segments.at[k + 1]]
        # Shifted samples' inputs are their tokens but the last: a prefix of the segments'.
        count = self._at[k + 1] - self._at[k]
        found = self.metadata_of(k, keys)
        return {key: np.repeat(values, lengths)[:count] for key, values in found.items()}

    def _segments(self) -> Segments:
        if self.segments is None:
            raise ValueError(
                "these samples do not say which documents they hold (a stream's or a "
                "mixture's): ask the stream or dataset for segment_metadata=[KEY, ...] to "
                "find each segment's metadata in its sample"
            )
        return self.segments

    def __len__(self) -> int:
        return len(self._at) - 1

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
        sample = dict(zip(ROWS, self.rows_of(k)))
        sample["seq_lens"] = self.seq_lens_of(k)
        if k in self.repeats:
            sample["repeat"] = True
        if self.segments is not None and self.segments.served:
            sample["metadata"] = self.metadata_of(k, self.segments.served, decode=True)
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
        """Consecutive batches of ``sizes`` samples each (adding up to ``len(self)``), over the
        same arrays."""
        rows, seq_lens, at, seq_at = self._rows, self._seq_lens, self._at, self._seq_at
        none: frozenset[int] = frozenset()
        segments = self.segments
        return [
            SampleBatch(
                rows,
                seq_lens,
                at[a : b + 1],
                seq_at[a : b + 1],
                self.repeats_in(a, b) if self.repeats else none,
                segments=None if segments is None else segments.of(a, b),
            )
            for a, b in pairwise(self.cuts(sizes))
        ]

    def with_repeats(self, repeats: Iterable[int]) -> SampleBatch:
        """The same samples in arrays of their own, those in ``repeats`` marked as served again
        to keep ranks in step: their labels all -100, and ``repeat`` set (see
        :func:`gristmill.torch.ranks.as_repeat`)."""
        marked = frozenset(repeats) | self.repeats
        bounds = [at - self._at[0] for at in self._at]
        seq_bounds = [at - self._seq_at[0] for at in self._seq_at]
        rows, seq_lens, spare = _arrays(_room_for, self.num_tokens, self.seq_lens)
        rows[:] = self.rows
        batch = SampleBatch(rows, seq_lens, bounds, seq_bounds, marked, spare, self.segments)
        for k in marked:
            batch.rows_of(k)[1] = IGNORE_INDEX
        return batch


class SampleList(list[dict[str, np.ndarray]]):
    """A :class:`SampleBatch`'s samples as a plain list (what torch's DataLoader hands its
    ``collate_fn``, and what transformers' collators take), the batch kept as ``batch`` for a
    consumer that takes its arrays whole."""

    def __init__(self, batch: SampleBatch | Sequence[dict[str, np.ndarray]]):
        super().__init__(batch)
        self.batch = batch
