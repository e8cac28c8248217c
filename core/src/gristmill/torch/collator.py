"""A collator that keeps packed documents apart with any attention backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.samples import IGNORE_INDEX, SampleBatch

KEYS = ("input_ids", "labels", "position_ids")  # a token's values, padded or concatenated


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

    Every batch also carries ``seq_lens`` concatenated over its samples (drop it before
    ``model(**batch)`` if the model refuses unknown arguments). A batch with samples that the
    loader repeated to give every rank the same number of steps (their labels are all -100)
    also carries ``repeat``, a bool per sample. The int64 tensors of a batch are views of one
    buffer (and so is ``cu_seqlens`` of a padding-free batch of a gristmill dataset), so that a
    DataLoader worker hands it over as one block of shared memory.
    """

    def __init__(
        self,
        *,
        padding_free: bool = False,
        block_mask: bool = True,
        pad_id: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        self.padding_free = padding_free
        self.block_mask = block_mask
        self.pad_id = pad_id
        self.dtype = dtype

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        if isinstance(samples, SampleBatch):
            batch = self._whole(samples) if self.padding_free else self._padded(samples)
            if samples.repeats:
                batch["repeat"] = torch.tensor([k in samples.repeats for k in range(len(samples))])
            return batch
        if "seq_lens" not in samples[0]:
            raise GristmillError(
                "samples without seq_lens: the collator needs the document boundaries. With "
                "Hugging Face Trainer, pass TrainingArguments(remove_unused_columns=False): it "
                "removes the keys the model's forward() does not name"
            )
        batch = self._one_row(samples) if self.padding_free else self._padded(samples)
        repeats = [bool(s.get("repeat", False)) for s in samples]
        if any(repeats):
            batch["repeat"] = torch.tensor(repeats)
        return batch

    def _padded(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        lengths = [len(s["input_ids"]) for s in samples]
        seq_lens = [np.asarray(s["seq_lens"]) for s in samples]
        shape = (len(samples), max(lengths))
        # input_ids, labels, position_ids and (without the 4-D mask) the 2-D attention_mask,
        # first all padding: pad_id, -100, position 0, not attended.
        count = 3 if self.block_mask else 4
        rows, lens, tensors, out_lens = _one_block(count, shape, sum(len(x) for x in seq_lens))
        rows[:] = np.array([self.pad_id, IGNORE_INDEX, 0, 0][:count])[:, None, None]
        # Rows filled in numpy: a row costs a few slice copies, not tensor calls.
        for row, (sample, n) in enumerate(zip(samples, lengths)):
            for k, key in enumerate(KEYS):
                rows[k, row, :n] = sample[key]
            if not self.block_mask:
                rows[3, row, :n] = 1
        np.concatenate(seq_lens, out=lens)
        out = {**dict(zip(KEYS, tensors)), "seq_lens": out_lens}
        if self.block_mask:
            segments = [(x.tolist(), n) for x, n in zip(seq_lens, lengths)]
            out["attention_mask"] = self._block_mask(segments, shape[1])
        else:
            out["attention_mask"] = tensors[3]
        return out

    def _one_row(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seq_lens = [np.asarray(s["seq_lens"]) for s in samples]
        width = sum(len(s["input_ids"]) for s in samples)
        rows, lens, tensors, out_lens = _one_block(3, (1, width), sum(len(x) for x in seq_lens))
        for k, key in enumerate(KEYS):
            np.concatenate([s[key] for s in samples], out=rows[k, 0])
        np.concatenate(seq_lens, out=lens)
        # From numpy: torch.tensor() of a list costs five times as much.
        starts = np.fromiter(accumulate(lens.tolist(), initial=0), np.int32, len(lens) + 1)
        return self._row(lens, width, tensors, out_lens, torch.from_numpy(starts))

    def _whole(self, batch: SampleBatch) -> dict[str, Any]:
        """One row of a :class:`SampleBatch`: its arrays are the row already, in one buffer."""
        whole, width = torch.from_numpy(batch.flat), batch.width
        lo, hi = batch.bounds[0], batch.bounds[-1]
        # One strided view per key (a third of the torch calls of view, slice and unbind).
        tensors = [whole.as_strided((1, hi - lo), (hi - lo, 1), k * width + lo) for k in range(3)]
        seq_lo, seq_hi = 3 * width + batch.seq_bounds[0], 3 * width + batch.seq_bounds[-1]
        at = batch.seq_starts()
        starts = whole.view(torch.int32)[at : at + seq_hi - seq_lo + 1]
        lens = batch.flat[seq_lo:seq_hi]
        return self._row(lens, hi - lo, tensors, whole[seq_lo:seq_hi], starts)

    def _row(
        self,
        lens: np.ndarray,
        width: int,
        tensors: Sequence[torch.Tensor],
        out_lens: torch.Tensor,
        starts: torch.Tensor,
    ) -> dict[str, Any]:
        """The padding-free batch of one row of ``width`` tokens: ``tensors`` (input_ids,
        labels, position_ids), its sequences ``lens`` and ``out_lens`` (the same, a tensor), and
        ``starts`` (their cu_seqlens, int32)."""
        sizes = lens.tolist()  # a few dozen numbers: Python is quicker than array calls here
        out: dict[str, Any] = dict(zip(KEYS, tensors))
        out.update(cu_seqlens=starts, max_seqlen=max(sizes, default=0), seq_lens=out_lens)
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


def _one_block(
    count: int, shape: tuple[int, int], tail: int
) -> tuple[np.ndarray, np.ndarray, tuple[torch.Tensor, ...], torch.Tensor]:
    """``count`` int64 arrays of ``shape`` and one of ``tail`` elements, carved out of one
    buffer: numpy views to fill, and tensors over the same memory to return. A DataLoader worker
    moves every storage of a batch into shared memory apart, and the main process maps each
    again, which costs more than collating: one storage a batch doubled the rate of 2 workers."""
    size = count * shape[0] * shape[1]
    flat = np.empty(size + tail, np.int64)
    whole = torch.from_numpy(flat)
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
