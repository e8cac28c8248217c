"""Attention masks that keep packed documents apart, built from each token's document id without
a Python loop over documents: a boolean or additive dense mask for padded rows, and a
FlexAttention ``BlockMask`` for any layout, made from block-level document ranges so that no
dense mask is ever built for it.

A row's document ids (:func:`document_ids`) never decrease along the row: each segment of
``seq_lens`` has the next id, and each padding token an id of its own (it sees only itself, so
that no query sees nothing, which would make NaNs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError

BLOCK = 128  # FlexAttention's default block size, both ways


def check_lengths(seq_lens: Sequence[np.ndarray], lengths: Sequence[int]) -> None:
    """That every sample's ``seq_lens`` add up to its ``lengths`` tokens (an error naming the
    first that does not). In Python ints: a dozen numpy calls cost more for a batch's few."""
    sizes = np.concatenate(seq_lens).tolist() if len(seq_lens) else []
    at = 0
    for k, (lens, n) in enumerate(zip(seq_lens, lengths)):
        total = sum(sizes[at : at + len(lens)])
        if total != n:
            raise GristmillError(
                f"sample {k} of the batch has {n} tokens but seq_lens that add up to {total}"
            )
        at += len(lens)


def document_ids(
    seq_lens: Sequence[np.ndarray], lengths: Sequence[int], width: int
) -> torch.Tensor:
    """``(rows, width)`` int64: each token's document in its row (``seq_lens``: each row's segment
    lengths; ``lengths``: its tokens, the rest of the row being padding)."""
    check_lengths(seq_lens, lengths)
    rows = len(lengths)
    lens = np.concatenate(seq_lens).astype(np.int64, copy=False)
    row_of = np.repeat(np.arange(rows), [len(x) for x in seq_lens])
    # A segment starts after its row's earlier segments; a zero-length one where the next
    # starts (or at the end, the column past the row), where it marks nothing of its own.
    firsts = np.zeros(rows, np.int64)
    np.cumsum(lengths[:-1], out=firsts[1:])
    starts = np.zeros((rows, width + 1), np.int64)
    starts[row_of, np.cumsum(lens) - lens - firsts[row_of]] = 1
    starts[:, :width][np.arange(width) >= np.asarray(lengths)[:, None]] = 1  # padding
    # Ids from 0 in every row (a row's first token always starts something).
    return torch.from_numpy(np.cumsum(starts[:, :width], axis=1) - 1)


def bool_mask(documents: torch.Tensor) -> torch.Tensor:
    """``(rows, 1, T, T)`` bool, True where query i may see key j: the same document, j <= i.
    The convention of ``torch.nn.functional.scaled_dot_product_attention``'s ``attn_mask``."""
    out = torch.empty((len(documents), 1, *documents.shape[-1:] * 2), dtype=torch.bool)
    _pairs(documents, out.numpy()[:, 0], seen=True)
    return out


def additive_mask(documents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`bool_mask` as an additive mask of ``dtype``: 0 where seen, the dtype's minimum
    elsewhere (what eager attention adds to its scores). Written as the integers whose bits
    are those values (0 and the minimum's), one multiplication of the unseen pairs: numpy has
    no bfloat16, and its integer passes run several times faster than torch's here."""
    width = documents.shape[-1]
    unseen = torch.empty((len(documents), width, width), dtype=torch.bool).numpy()
    _pairs(documents, unseen, seen=False)
    np_bits, torch_bits = _SIGNED[dtype.itemsize]
    lowest = np_bits(torch.tensor(torch.finfo(dtype).min, dtype=dtype).view(torch_bits).item())
    out = torch.empty((len(documents), 1, width, width), dtype=dtype)
    np.multiply(unseen, lowest, out=out.view(torch_bits).numpy()[:, 0], casting="unsafe")
    return out


_SIGNED: dict[int, tuple[type[np.signedinteger[Any]], torch.dtype]] = {
    2: (np.int16, torch.int16),
    4: (np.int32, torch.int32),
    8: (np.int64, torch.int64),
}


def _pairs(documents: torch.Tensor, out: np.ndarray, seen: bool) -> None:
    """Into ``out`` (``(rows, T, T)`` bool): where query i sees key j (same document, j <= i),
    or with ``seen=False`` where it does not. In the smallest integers that hold the ids: the
    comparison reads them once per pair.

    The masks' memory comes from torch, not numpy: numpy asks Linux for huge pages for large
    arrays, and where memory is fragmented the kernel compacts it on the first touch of each,
    which stalls a batch for far longer than filling it."""
    ids = documents.numpy()
    width = ids.shape[-1]
    small = next(t for t in (np.int8, np.int16, np.int32, np.int64) if np.iinfo(t).max >= width)
    ids = ids.astype(small)
    if seen:
        np.equal(ids[:, :, None], ids[:, None, :], out=out)
        np.logical_and(out, np.tri(width, dtype=bool), out=out)
    else:
        np.not_equal(ids[:, :, None], ids[:, None, :], out=out)
        np.logical_or(out, ~np.tri(width, dtype=bool), out=out)


def _same_document(documents: torch.Tensor, b: Any, h: Any, q: Any, kv: Any) -> Any:
    """The mask_mod of :func:`flex_mask` (bound to ``documents`` by ``functools.partial``, which
    pickles, so that DataLoader workers can hand the mask over)."""
    return (documents[b, q] == documents[b, kv]) & (kv <= q)


def flex_mask(documents: torch.Tensor) -> Any:
    """A FlexAttention ``BlockMask`` of ``(rows, 1, T, T)`` equal to :func:`bool_mask`, made from
    each block's first and last document (ids never decrease along a row): a key block is
    skipped where it shares no document with the query block or lies after it, taken whole
    where both hold one document entirely, and masked token by token otherwise. Work and memory
    are per pair of 128-token blocks, never per pair of tokens."""
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError as error:  # torch < 2.5
        raise GristmillError(
            f"Collator(mask='flex') needs FlexAttention (torch >= 2.5); this is torch "
            f"{torch.__version__}: use mask='bool', or the default"
        ) from error
    rows, width = documents.shape
    blocks = -(-width // BLOCK)
    # Ids past the row's end go on increasing: the last block, when short, is never whole.
    tail = documents[:, -1:] + 1 + torch.arange(blocks * BLOCK - width)
    ids = torch.cat([documents, tail], 1).view(rows, blocks, BLOCK)
    first, last = ids[..., 0], ids[..., -1]
    q, k = torch.arange(blocks)[:, None], torch.arange(blocks)[None]
    # A key block before the query block shares a document with it iff its last document is
    # the query block's first (ids never decrease); the diagonal block always does.
    meets = last[:, None, :] == first[:, :, None]
    whole = meets & (first[:, None, :] == last[:, :, None]) & (k < q)
    partial = ((meets & (k < q)) | (k == q)) & ~whole
    tails = width % BLOCK != 0  # the last block is partial, never whole
    if tails:
        whole[:, -1, :] = False
        whole[:, :, -1] = False
    try:
        mask = BlockMask.from_kv_blocks(
            *_kv_blocks(partial),
            *_kv_blocks(whole),
            BLOCK_SIZE=BLOCK,
            mask_mod=functools.partial(_same_document, documents),
            seq_lengths=(width, width),
            compute_q_blocks=False,  # below: torch's way goes through a dense vmap
        )
    except TypeError as error:
        raise GristmillError(
            f"Collator(mask='flex') needs a BlockMask.from_kv_blocks that takes seq_lengths "
            f"and compute_q_blocks; torch {torch.__version__}'s does not: use a newer torch, "
            "or the default (no mask)"
        ) from error
    # The same blocks seen from the keys (for the backward pass).
    mask.q_num_blocks, mask.q_indices = _kv_blocks(partial.transpose(1, 2))
    mask.full_q_num_blocks, mask.full_q_indices = _kv_blocks(whole.transpose(1, 2))
    return mask


def _kv_blocks(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(rows, blocks, blocks)`` bool choice of key blocks per query block as BlockMask's
    ``(rows, 1, blocks)`` counts and ``(rows, 1, blocks, blocks)`` indices (chosen ones first,
    in order)."""
    counts = chosen.sum(-1, dtype=torch.int32)
    order = torch.argsort((~chosen).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts.unsqueeze(1), order.unsqueeze(1)


def flex_mask_to(mask: Any, device: torch.device | str) -> Any:
    """A ``BlockMask`` of :func:`flex_mask` on ``device``: ``BlockMask.to`` moves its block
    tables but not the document ids its mask_mod reads."""
    moved = mask.to(device)
    bound = mask.mask_mod
    if isinstance(bound, functools.partial) and bound.func is _same_document:
        moved.mask_mod = functools.partial(_same_document, bound.args[0].to(device))
    return moved
