"""A collator that keeps packed documents apart with any attention backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.samples import IGNORE_INDEX


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
    also carries ``repeat``, a bool per sample.
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
        if "seq_lens" not in samples[0]:
            raise GristmillError(
                "samples without seq_lens: the collator needs the document boundaries. With "
                "Hugging Face Trainer, pass TrainingArguments(remove_unused_columns=False): it "
                "removes the keys the model's forward() does not name"
            )
        batch = self._one_row(samples) if self.padding_free else self._padded(samples)
        if any(s.get("repeat", False) for s in samples):
            batch["repeat"] = torch.tensor([bool(s.get("repeat", False)) for s in samples])
        return batch

    def _padded(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(s["input_ids"]) for s in samples)
        batch = len(samples)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        segment = torch.full((batch, width), -1, dtype=torch.long)  # -1: padding
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = torch.as_tensor(np.asarray(sample["input_ids"]))
            labels[row, :n] = torch.as_tensor(np.asarray(sample["labels"]))
            position_ids[row, :n] = torch.as_tensor(np.asarray(sample["position_ids"]))
            segment[row, :n] = _segments(sample["seq_lens"])
        out: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "seq_lens": _seq_lens(samples),
        }
        if self.block_mask:
            out["attention_mask"] = self._block_mask(segment)
        else:
            out["attention_mask"] = (segment >= 0).long()
        return out

    def _one_row(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        seq_lens = _seq_lens(samples)
        cu_seqlens = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
        torch.cumsum(seq_lens, 0, out=cu_seqlens[1:])
        out: dict[str, Any] = {
            key: torch.as_tensor(np.concatenate([np.asarray(s[key]) for s in samples]))
            .long()
            .unsqueeze(0)
            for key in ("input_ids", "labels", "position_ids")
        }
        out.update(
            cu_seqlens=cu_seqlens,
            max_seqlen=int(seq_lens.max()) if len(seq_lens) else 0,
            seq_lens=seq_lens,
        )
        if self.block_mask:
            out["attention_mask"] = self._block_mask(_segments(seq_lens.numpy()).unsqueeze(0))
        return out

    def _block_mask(self, segment: torch.Tensor) -> torch.Tensor:
        """Additive (batch, 1, T, T): 0 where query i may see key j (same document, j <= i)."""
        width = segment.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (segment[:, :, None] == segment[:, None, :]) & causal
        allowed &= (segment >= 0)[:, :, None]
        # A padding query sees itself: a row that sees nothing would make NaNs.
        allowed |= torch.eye(width, dtype=torch.bool) & (segment < 0)[:, :, None]
        mask = torch.zeros(allowed.shape, dtype=self.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return mask.unsqueeze(1)


def _segments(seq_lens: Any) -> torch.Tensor:
    """The document segment of every token: 0 for the first segment's tokens, 1, 2, …"""
    lens = torch.as_tensor(np.asarray(seq_lens, dtype=np.int64))
    return torch.repeat_interleave(torch.arange(len(lens)), lens)


def _seq_lens(samples: Sequence[dict[str, Any]]) -> torch.Tensor:
    return torch.as_tensor(np.concatenate([np.asarray(s["seq_lens"]) for s in samples])).long()
