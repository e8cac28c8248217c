"""A collator that keeps packed documents apart with any attention backend."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from itertools import accumulate
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.serve.samples import IGNORE_INDEX, ROWS, SampleBatch
from gristmill.store.metadata import NULLS


class Collator:
    """Samples of :func:`gristmill.open_dataset` (dicts of int arrays) → a batch of tensors.

    - ``padding_free=False`` (default): rows padded to the longest sample (``pad_id``; labels
      ``-100``; position ids 0). With ``block_mask=True`` (default) ``attention_mask`` is the
      4-D ``(batch, 1, T, T)`` additive mask of ``dtype`` that lets a token see only the earlier
      tokens of its own document: packed samples are then exact with eager and SDPA attention.
      With ``block_mask=False`` it is the usual 2-D padding mask, right for one document per
      sample (the ``none`` packer) or for a model that separates documents by their position ids.
    - ``padding_free=True``: every sample concatenated into one row, no padding, with
      ``position_ids``, ``cu_seqlens`` (int32 start of every document segment, then the total) and
      ``max_seqlen``, as flash-attention's variable-length kernels take them. ``block_mask=True``
      adds the ``(1, 1, N, N)`` mask for backends without such kernels; ``False`` leaves it out.
      ``hf_names=True`` adds the same boundaries under the names transformers' attention takes
      and TRL's collator emits: ``cu_seq_lens_q``, ``cu_seq_lens_k`` (``cu_seqlens``) and
      ``max_length_q``, ``max_length_k`` (``max_seqlen``).

    ``metadata=["lang", "score"]`` adds ``batch["metadata"]``: per key, each token's document's
    value as the dataset stores it (string codes, int8 bools, int64, float64; null on padding,
    see :meth:`gristmill.serve.dataset.Dataset.metadata_values`), shaped as ``input_ids``. It
    needs a dataset's batches (:func:`gristmill.torch.dataloader`, ``Dataset.batch``), which
    know each segment's document; pop it before ``model(**batch)``.

    Every batch also carries ``seq_lens`` concatenated over its samples (drop it before
    ``model(**batch)`` if the model refuses unknown arguments). A batch with samples that the
    loader repeated to give every rank the same number of steps (their labels are all -100)
    also carries ``repeat``, a bool per sample. In a DataLoader worker the int64 tensors of a
    batch are views of one buffer (and so is ``cu_seqlens`` of a padding-free batch of a
    gristmill dataset, in the memory its samples' buffer has to spare), so that the worker hands
    it over as one block of shared memory. Samples of
    :meth:`gristmill.serve.dataset.Dataset.batch` are not copied where their arrays are the
    batch's already: padding-free, and (outside workers) padded with the 2-D mask when all are
    equally long, whose mask is then a tensor of its own.
    """

    def __init__(
        self,
        *,
        padding_free: bool = False,
        block_mask: bool = True,
        pad_id: int = 0,
        dtype: torch.dtype = torch.float32,
        hf_names: bool = False,
        metadata: Sequence[str] | None = None,
    ):
        if hf_names and not padding_free:
            raise GristmillError(
                "hf_names=True names the document boundaries of a padding-free batch (padded "
                "batches have none to name): pass padding_free=True as well"
            )
        self.padding_free = padding_free
        self.block_mask = block_mask
        self.pad_id = pad_id
        self.dtype = dtype
        self.hf_names = hf_names
        self.metadata = tuple(metadata or ())

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        if isinstance(samples, SampleBatch):
            return self.batches(samples, [len(samples)])[0]
        if self.metadata:
            raise GristmillError(
                "Collator(metadata=...) needs a dataset's batches, which know each segment's "
                "document (gristmill.torch.dataloader, or Dataset.batch); samples given one by "
                "one do not"
            )
        if "seq_lens" not in samples[0]:
            raise GristmillError(
                "samples without seq_lens: the collator needs the document boundaries. With "
                "Hugging Face Trainer, pass TrainingArguments(remove_unused_columns=False): it "
                "removes the keys the model's forward() does not name"
            )
        if self.padding_free:
            batch = self._one_row(samples)
        else:
            batch = self._padded(
                [[s[key] for key in ROWS] for s in samples],
                [np.asarray(s["seq_lens"]) for s in samples],
            )
        repeats = [bool(s.get("repeat", False)) for s in samples]
        if any(repeats):
            batch["repeat"] = torch.tensor(repeats)
        return batch

    def batches(self, samples: SampleBatch, sizes: Sequence[int]) -> list[dict[str, Any]]:
        """The batches of consecutive ``sizes`` samples each (adding up to ``len(samples)``),
        as ``[self(part) for part in samples.split(sizes)]`` makes them. Padding-free ones are
        made together (the loader fetches several steps at once): their arrays are the rows
        already, and a few torch calls cut every batch's tensors, where a dozen a batch cost
        more than the rest of loading it."""
        parts = samples.split(sizes)
        # A DataLoader worker hands each block of memory over apart: all of the batches in one.
        in_worker = torch.utils.data.get_worker_info() is not None
        if self.padding_free:
            made = self._rows_of(samples, parts, in_worker)
        else:
            block = _Block(sum(self._padded_size(part) for part in parts)) if in_worker else None
            made = [_marked(self._padded_batch(p, block), p.repeats, len(p)) for p in parts]
        for part, batch in zip(parts, made) if self.metadata else ():
            batch["metadata"] = self._token_metadata(part, tuple(batch["input_ids"].shape))
        return made

    def _token_metadata(
        self, samples: SampleBatch, shape: tuple[int, ...]
    ) -> dict[str, torch.Tensor]:
        """Per key of ``metadata``, each token's document's stored value (null on padding),
        in a tensor of ``shape``: the batch's ``input_ids``'."""
        rows = [samples.metadata_per_token(k, self.metadata) for k in range(len(samples))]
        assert samples.segments is not None  # metadata_per_token raised otherwise
        found = {}
        for key in self.metadata:
            values = [row[key] for row in rows]
            if self.padding_free:
                laid = np.concatenate(values).reshape(shape)
            else:
                null = NULLS[samples.segments.metadata.columns[key]]
                laid = np.full(shape, null, values[0].dtype)
                for k, row in enumerate(values):
                    laid[k, : len(row)] = row
            found[key] = torch.from_numpy(laid)
        return found

    def _rows_of(
        self, samples: SampleBatch, parts: list[SampleBatch], in_worker: bool
    ) -> list[dict[str, Any]]:
        """The padding-free batches of ``parts`` (``samples`` split): views of the samples'
        arrays and ``cu_seqlens``, which a worker puts in the memory their buffer has to spare
        so that it hands them over as one block."""
        widths = [part.num_tokens for part in parts]
        counts = [part.num_sequences for part in parts]
        n, need = samples.num_sequences, (samples.num_sequences + len(parts) + 1) // 2
        spare = samples.spare() if in_worker else None
        if spare is not None and len(spare) >= need:
            room_np = spare[:need]
            rows, lens, room = _one_storage([samples.rows, samples.seq_lens, room_np])
        else:
            room_np = np.empty(need, np.int64)
            rows, lens, room = map(torch.from_numpy, (samples.rows, samples.seq_lens, room_np))
        _cu_seqlens(samples.seq_lens, counts, room_np.view(np.int32)[: n + len(parts)])
        # Every batch's rows: (1, width) views.
        keys = [row.unsqueeze(0).split(widths, 1) for row in rows.unbind()]
        lens_t = lens.split(counts)
        starts = room.view(torch.int32)[: n + len(parts)].split([c + 1 for c in counts])
        sizes = samples.seq_lens.tolist()
        out = []
        for b, (part, first) in enumerate(zip(parts, accumulate(counts, initial=0))):
            batch = self._row(
                sizes[first : first + counts[b]],
                widths[b],
                [key[b] for key in keys],
                lens_t[b],
                starts[b],
            )
            out.append(_marked(batch, part.repeats, len(part)))
        return out

    def _padded(
        self, rows: Sequence[Any], seq_lens: Sequence[np.ndarray], room: _Block | None = None
    ) -> dict[str, Any]:
        """Padded rows from each sample's ``input_ids``, ``labels`` and ``position_ids``
        (``rows``: three arrays, or one array of three rows, a sample) and ``seq_lens``, in
        memory of their own or taken from ``room``."""
        lengths = [len(row[0]) for row in rows]
        shape = (len(rows), max(lengths))
        # input_ids, labels, position_ids and (without the 4-D mask) the 2-D attention_mask.
        count = 3 if self.block_mask else 4
        tail = sum(len(x) for x in seq_lens)
        block, lens, tensors, out_lens = _one_block(count, shape, tail, room)
        pads = np.array([[self.pad_id], [IGNORE_INDEX], [0]])
        # Row by row in numpy, all three keys in one copy and the padding (pad_id, -100,
        # position 0) after it in one fill: a row costs two slice copies, not tensor calls.
        for k, (row, n) in enumerate(zip(rows, lengths)):
            block[:3, k, :n] = row
            block[:3, k, n:] = pads
        if not self.block_mask:  # attended where a row has a token
            np.less(np.arange(shape[1]), np.array(lengths)[:, None], out=block[3], casting="unsafe")
        np.concatenate(seq_lens, out=lens)
        out = {**dict(zip(ROWS, tensors)), "seq_lens": out_lens}
        if self.block_mask:
            segments = [(x.tolist(), n) for x, n in zip(seq_lens, lengths)]
            out["attention_mask"] = self._block_mask(segments, shape[1])
        else:
            out["attention_mask"] = tensors[3]
        return out

    def _padded_size(self, samples: SampleBatch) -> int:
        """The int64 values :meth:`_padded` takes for ``samples``."""
        count = 3 if self.block_mask else 4
        return count * len(samples) * max(samples.lengths()) + len(samples.seq_lens)

    def _padded_batch(self, samples: SampleBatch, room: _Block | None) -> dict[str, Any]:
        """:meth:`_padded` of a :class:`SampleBatch`: its samples' rows are slices of its own.
        When they are all equally long (concat-chunk's windows) they are the batch's rows
        already: with the 2-D mask, views of them are returned, unless the batch is to be
        copied into ``room`` (in a DataLoader worker, which hands one block of memory over
        faster than two)."""
        lengths = samples.lengths()
        if room is None and not self.block_mask and len(set(lengths)) == 1:
            shape = (len(samples), lengths[0])
            out = dict(zip(ROWS, torch.from_numpy(samples.rows).view(3, *shape).unbind()))
            out["seq_lens"] = torch.from_numpy(samples.seq_lens)
            out["attention_mask"] = torch.ones(shape, dtype=torch.int64)
            return out
        ks = range(len(samples))
        return self._padded(
            [samples.rows_of(k) for k in ks], [samples.seq_lens_of(k) for k in ks], room
        )

    def _one_row(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seq_lens = [np.asarray(s["seq_lens"]) for s in samples]
        width = sum(len(s["input_ids"]) for s in samples)
        rows, lens, tensors, out_lens = _one_block(3, (1, width), sum(len(x) for x in seq_lens))
        for k, key in enumerate(ROWS):
            np.concatenate([s[key] for s in samples], out=rows[k, 0])
        np.concatenate(seq_lens, out=lens)
        sizes = lens.tolist()
        # From numpy: torch.tensor() of a list costs five times as much.
        starts = np.fromiter(accumulate(sizes, initial=0), np.int32, len(sizes) + 1)
        return self._row(sizes, width, tensors, out_lens, torch.from_numpy(starts))

    def _row(
        self,
        sizes: list[int],
        width: int,
        tensors: Sequence[torch.Tensor],
        out_lens: torch.Tensor,
        starts: torch.Tensor,
    ) -> dict[str, Any]:
        """The padding-free batch of one row of ``width`` tokens: ``tensors`` (input_ids,
        labels, position_ids), its sequences' lengths ``sizes`` and ``out_lens`` (the same, a
        tensor), and ``starts`` (their cu_seqlens, int32)."""
        out: dict[str, Any] = dict(zip(ROWS, tensors))
        longest = max(sizes, default=0)
        out.update(cu_seqlens=starts, max_seqlen=longest, seq_lens=out_lens)
        if self.hf_names:
            out.update(
                cu_seq_lens_q=starts,
                cu_seq_lens_k=starts,
                max_length_q=longest,
                max_length_k=longest,
            )
        if self.block_mask:
            out["attention_mask"] = self._block_mask([(sizes, width)], width)
        return out

    def _block_mask(self, rows: Sequence[tuple[list[int], int]], width: int) -> torch.Tensor:
        """Additive ``(rows, 1, width, width)``: 0 where query i may see key j (same document,
        j <= i), the dtype's minimum elsewhere. ``rows``: each row's segment lengths and tokens.

        Filled block by block: one pass over the memory that the mask needs anyway, instead of
        several whole-size boolean comparisons.
        """
        mask = _empty((len(rows), 1, width, width), self.dtype)
        mask.fill_(torch.finfo(self.dtype).min)
        for row, (square, (lens, n)) in enumerate(zip(mask[:, 0], rows)):
            if sum(lens) != n:
                raise GristmillError(
                    f"sample {row} of the batch has {n} tokens but seq_lens that add up to "
                    f"{sum(lens)}"
                )
            start = 0
            for size in lens:
                end = start + size
                square[start:end, start:end].triu_(1)  # 0 on and below the diagonal
                start = end
            # A padding query sees itself: a row that sees nothing would make NaNs.
            square[start:, start:].diagonal().zero_()
        return mask


def _marked(batch: dict[str, Any], repeats: Collection[int], size: int) -> dict[str, Any]:
    """``batch`` of ``size`` samples, with ``repeat`` when some (``repeats``) are repeats."""
    if repeats:
        batch["repeat"] = torch.tensor([k in repeats for k in range(size)])
    return batch


def _cu_seqlens(seq_lens: np.ndarray, counts: list[int], out: np.ndarray) -> None:
    """Into ``out`` (int32): the ``cu_seqlens`` of consecutive batches of ``counts`` sequences
    of ``seq_lens`` each (where each of its sequences starts, then their total), in turn."""
    n, batches = len(seq_lens), len(counts)
    total = np.zeros(n + 1, np.int64)
    np.cumsum(seq_lens, out=total[1:])
    # Batch b's values are total[f_b : f_(b+1) + 1] - total[f_b], f_b its first sequence.
    firsts = np.fromiter(accumulate(counts, initial=0), np.int64, batches + 1)
    batch_of = np.repeat(np.arange(batches), np.diff(firsts) + 1)
    at = np.arange(n + batches) - batch_of
    np.subtract(total[at], total[firsts[batch_of]], out=out, casting="unsafe")


def _one_storage(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Tensors over int64 ``arrays`` that are views of one buffer, as views of one storage
    (the span of the buffer that holds them), which a DataLoader worker hands over at once;
    over arrays of several buffers, one each."""
    owner = arrays[0].base
    if (
        not isinstance(owner, np.ndarray)
        or owner.dtype != np.int64
        or not owner.flags.c_contiguous
        or any(array.base is not owner for array in arrays)
    ):
        return [torch.from_numpy(array) for array in arrays]
    base = owner.reshape(-1)
    origin = base.__array_interface__["data"][0]
    at = [(array.__array_interface__["data"][0] - origin) // 8 for array in arrays]
    lo = min(at)
    whole = torch.from_numpy(base[lo : max(k + _extent(a) for k, a in zip(at, arrays))])
    return [
        whole.as_strided(a.shape, [step // 8 for step in a.strides], k - lo)
        for k, a in zip(at, arrays)
    ]


def _extent(array: np.ndarray) -> int:
    """The int64 values from ``array``'s first to its last, both included (0 if empty)."""
    if not array.size:
        return 0
    return sum((n - 1) * step for n, step in zip(array.shape, array.strides)) // 8 + 1


class _Block:
    """int64 memory handed out a piece at a time, as numpy arrays to fill and tensors over
    the same memory: every tensor made from one block shares one storage."""

    def __init__(self, size: int):
        self.flat = np.empty(size, np.int64)
        self.whole = torch.from_numpy(self.flat)
        self.at = 0

    def take(self, size: int) -> tuple[np.ndarray, torch.Tensor]:
        at = self.at
        self.at += size
        return self.flat[at : at + size], self.whole[at : at + size]


def _one_block(
    count: int, shape: tuple[int, int], tail: int, room: _Block | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...], torch.Tensor]:
    """``count`` int64 arrays of ``shape`` and one of ``tail`` elements, carved out of one
    buffer (taken from ``room`` if given): numpy views to fill, and tensors over the same
    memory to return. A DataLoader worker moves every storage of a batch into shared memory
    apart, and the main process maps each again, which costs more than collating: one storage
    a batch doubled the rate of 2 workers."""
    size = count * shape[0] * shape[1]
    flat, whole = (room or _Block(size + tail)).take(size + tail)
    rows = flat[:size].reshape(count, *shape)
    return rows, flat[size:], whole[:size].view(count, *shape).unbind(), whole[size:]


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose memory numpy allocates. numpy asks Linux for huge pages
    for large arrays (``madvise``) and torch does not (unless ``THP_MEM_ALLOC_ENABLE=1``): a
    128 MiB mask in 4 KiB pages spends about 40 ms in page faults, three times its filling."""
    size = math.prod(shape) * dtype.itemsize
    if not size:  # nothing to view as another dtype
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(np.empty(size, np.uint8)).view(dtype).view(shape)
