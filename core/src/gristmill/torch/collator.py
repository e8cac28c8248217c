"""A collator that keeps packed documents apart with any attention backend."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Collection, Sequence
from itertools import accumulate
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.serve.samples import IGNORE_INDEX, ROWS, SampleBatch
from gristmill.store.metadata import NULLS
from gristmill.torch.masks import (
    additive_mask,
    bool_mask,
    check_lengths,
    document_ids,
    flex_mask,
)

MASKS = ("bool", "additive", "flex", "padding")  # besides None: no mask
# transformers' attention implementations (config._attn_implementation) and whether
# Collator.for_model gives them one padding-free row (else padded rows); every one of them
# keeps documents apart in a batch without a mask (see Collator).
BACKENDS = {
    "flash_attention_2": True,
    "flash_attention_3": True,
    "flash_attention_4": True,
    "flex_attention": True,
    # Given position ids and no mask, these build a (rows, 1, T, T) mask: one row of every
    # sample would make it (1, 1, N, N) for the N tokens of all, about rows times as large.
    "sdpa": False,
    "eager": False,
}


class Collator:
    """Samples of :func:`gristmill.open_dataset` (dicts of int arrays) → a batch of tensors in
    which every packed document attends only to itself.

    Layout: ``padding_free=False`` (default) pads rows to the longest sample (``pad_id``;
    labels ``-100``; position ids 0); ``padding_free=True`` concatenates every sample into one
    row with no padding, with ``cu_seqlens`` (int32 start of every document segment, then the
    total) and ``max_seqlen``. Padded rows are the default because transformers' SDPA and eager
    attention, given positions and no mask, build a ``(rows, 1, T, T)`` mask: one row of every
    sample would make it ``(1, 1, N, N)`` for the N tokens of all, and the attention as large. Either has ``input_ids``, ``labels``, ``position_ids`` (0, 1, …
    restarting at every segment) and ``seq_lens`` (every sample's, concatenated).

    ``mask``:

    - ``None`` (default): no ``attention_mask``. The batch carries the document boundaries as
      transformers' attention takes them, ``cu_seq_lens_q``, ``cu_seq_lens_k``,
      ``max_length_q`` and ``max_length_k`` (flash-attention's variable-length kernels read
      them; in padded rows each row's padding is one more sequence), and ``use_cache=False``:
      given position ids, no mask and no cache, transformers' SDPA, eager and flex attention
      build the block-diagonal causal mask from where the positions restart, and a cache
      (``use_cache`` defaults to the config's, True for most models) would turn that off and
      let documents attend to each other. So ``model(**batch)`` is exact with every
      attention implementation of transformers; pass ``use_cache`` on where you pick keys.
    - ``"bool"``: a boolean ``(rows, 1, T, T)`` mask, True where query i may see key j (same
      document, j <= i; a padding token sees itself), as ``scaled_dot_product_attention``
      takes it. Padded rows only. (transformers' eager attention adds its mask to the scores:
      give it the default, or ``"additive"``.)
    - ``"additive"``: the same as an additive mask of ``dtype`` (default float32): 0 where
      seen, the dtype's minimum elsewhere. Padded rows only.
    - ``"flex"``: a FlexAttention ``BlockMask`` equal to the boolean mask, for
      ``flex_attention(q, k, v, block_mask=...)`` or a transformers model with
      ``attn_implementation="flex_attention"``; any layout, and no dense mask is built. On an
      accelerator, move it with :func:`gristmill.torch.masks.flex_mask_to`.
    - ``"padding"``: the usual 2-D padding mask (1 on tokens), padded rows only: right for
      one document per sample (the ``none`` packer), since with it transformers no longer
      finds the documents from the positions.

    A padding-free batch never holds a dense mask. :meth:`for_model` picks the layout a
    transformers model's attention is cheapest with.

    ``metadata=["lang", "score"]`` adds ``batch["metadata"]``: per key, each token's document's
    value as the dataset stores it (string codes, int8 bools, int64, float64; null on padding,
    see :meth:`gristmill.serve.dataset.Dataset.metadata_values`), shaped as ``input_ids``. It
    needs a dataset's batches (:func:`gristmill.torch.dataloader`, ``Dataset.batch``), which
    know each segment's document; pop it before ``model(**batch)``.

    A batch with samples that the loader repeated to give every rank the same number of steps
    (their labels are all -100) also carries ``repeat``, a bool per sample. In a DataLoader
    worker the int64 tensors of a batch are views of one buffer (and so is ``cu_seqlens`` of a
    padding-free batch of a gristmill dataset, in the memory its samples' buffer has to spare),
    so that the worker hands it over as one block of shared memory. Samples of
    :meth:`gristmill.serve.dataset.Dataset.batch` are not copied where their arrays are the
    batch's already: padding-free, and (outside workers) padded without a dense mask when all
    are equally long.

    Deprecated: ``block_mask`` (``False`` is ``mask=None`` in one row, ``mask="padding"`` in
    padded rows; ``True`` is ``mask="additive"`` in padded rows) and ``hf_names=True`` (every
    batch without a mask carries the names).
    """

    def __init__(
        self,
        *,
        padding_free: bool = False,
        mask: str | None = None,
        pad_id: int = 0,
        dtype: torch.dtype | None = None,
        metadata: Sequence[str] | None = None,
        block_mask: bool | None = None,
        hf_names: bool | None = None,
    ):
        mask = _mask_of(padding_free, mask, block_mask, hf_names)
        if dtype is not None and mask != "additive":
            raise GristmillError(
                f"Collator(dtype={dtype}) is the dtype of the additive mask: pass "
                f"mask='additive' (padded rows) with it, or leave dtype out"
            )
        self.padding_free = padding_free
        self.mask = mask
        self.pad_id = pad_id
        self.dtype = dtype or torch.float32
        self.metadata = tuple(metadata or ())

    @classmethod
    def for_model(cls, model: Any, **options: Any) -> Collator:
        """The collator for a transformers ``model``'s attention implementation
        (``model.config._attn_implementation``): no mask (see the class), in one padding-free
        row for flash-attention and flex attention, in padded rows for SDPA and eager
        attention, which build a mask per row. ``options``: the other keywords of the class
        (``padding_free`` too, to choose the layout yourself)."""
        if "mask" in options or "block_mask" in options:
            raise GristmillError(
                "Collator.for_model chooses the mask (none: the batch's positions, boundaries "
                "and use_cache=False keep the documents apart); for another, call Collator()"
            )
        options.setdefault("padding_free", _padding_free_for(model))
        return cls(**options)

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
        check_lengths(
            [np.asarray(s["seq_lens"]) for s in samples], [len(s["input_ids"]) for s in samples]
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
        # input_ids, labels, position_ids and (with mask="padding") the 2-D attention_mask.
        count = 4 if self.mask == "padding" else 3
        sequences = sum(len(x) for x in seq_lens)
        # Without a mask the boundaries take the block's tail too: a worker hands a batch
        # over faster as one storage than as two.
        tail = sequences + (_boundaries_size(sequences, len(rows)) if self.mask is None else 0)
        block, rest, tensors, rest_t = _one_block(count, shape, tail, room)
        lens, out_lens = rest[:sequences], rest_t[:sequences]
        pads = np.array([[self.pad_id], [IGNORE_INDEX], [0]])
        # Row by row in numpy, all three keys in one copy and the padding (pad_id, -100,
        # position 0) after it in one fill: a row costs two slice copies, not tensor calls.
        for k, (row, n) in enumerate(zip(rows, lengths)):
            block[:3, k, :n] = row
            block[:3, k, n:] = pads
        if self.mask == "padding":  # attended where a row has a token
            np.less(np.arange(shape[1]), np.array(lengths)[:, None], out=block[3], casting="unsafe")
        np.concatenate(seq_lens, out=lens)
        out = {**dict(zip(ROWS, tensors)), "seq_lens": out_lens}
        if self.mask == "padding":
            out["attention_mask"] = tensors[3]
        elif self.mask is None:
            room_t = rest_t[sequences:].view(torch.int32)
            out.update(_no_mask(*_padded_boundaries(seq_lens, lengths, shape[1], room_t)))
        else:
            out.update(self._masked(seq_lens, lengths, shape[1]))
        return out

    def _masked(
        self, seq_lens: Sequence[np.ndarray], lengths: Sequence[int], width: int
    ) -> dict[str, Any]:
        """The ``attention_mask`` of padded rows that :attr:`mask` asks for."""
        documents = document_ids(seq_lens, lengths, width)
        if self.mask == "bool":
            return {"attention_mask": bool_mask(documents)}
        if self.mask == "additive":
            return {"attention_mask": additive_mask(documents, self.dtype)}
        return {"attention_mask": flex_mask(documents)}

    def _padded_size(self, samples: SampleBatch) -> int:
        """The int64 values :meth:`_padded` takes for ``samples``."""
        count = 4 if self.mask == "padding" else 3
        n = len(samples.seq_lens)
        tail = n + (_boundaries_size(n, len(samples)) if self.mask is None else 0)
        return count * len(samples) * max(samples.lengths()) + tail

    def _padded_batch(self, samples: SampleBatch, room: _Block | None) -> dict[str, Any]:
        """:meth:`_padded` of a :class:`SampleBatch`: its samples' rows are slices of its own.
        When they are all equally long (concat-chunk's windows) they are the batch's rows
        already: without a dense mask, views of them are returned, unless the batch is to be
        copied into ``room`` (in a DataLoader worker, which hands one block of memory over
        faster than two)."""
        lengths = samples.lengths()
        if room is None and self.mask in (None, "padding") and len(set(lengths)) == 1:
            shape = (len(samples), lengths[0])
            out = dict(zip(ROWS, torch.from_numpy(samples.rows).view(3, *shape).unbind()))
            out["seq_lens"] = torch.from_numpy(samples.seq_lens)
            if self.mask == "padding":
                out["attention_mask"] = torch.ones(shape, dtype=torch.int64)
            else:
                seq_lens = [samples.seq_lens_of(k) for k in range(len(samples))]
                out.update(_no_mask(*_padded_boundaries(seq_lens, lengths, shape[1])))
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
        if self.mask is None:
            out.update(_no_mask(starts, longest))
        else:  # "flex": the only mask of a padding-free batch
            documents = document_ids([np.asarray(sizes, np.int64)], [width], width)
            out["attention_mask"] = flex_mask(documents)
        return out


def _no_mask(starts: torch.Tensor, longest: int) -> dict[str, Any]:
    """The keys of a batch without a mask beside its rows: its sequences' boundaries under
    transformers' names (``starts``: int32 cu_seqlens, ``longest``: the longest) and
    ``use_cache=False``, without which transformers' SDPA, eager and flex attention let the
    documents of a row attend to each other."""
    return {
        "cu_seq_lens_q": starts,
        "cu_seq_lens_k": starts,
        "max_length_q": longest,
        "max_length_k": longest,
        "use_cache": False,
    }


def _boundaries_size(sequences: int, rows: int) -> int:
    """The int64 values that hold the int32 boundaries of padded rows with ``sequences``
    sequences in all: one start a sequence and a row's padding, then the total."""
    return (sequences + rows + 2) // 2


def _padded_boundaries(
    seq_lens: Sequence[np.ndarray],
    lengths: Sequence[int],
    width: int,
    room: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """The int32 cu_seqlens of padded rows laid end to end (as flash-attention's
    variable-length path flattens them): each row's sequences, then its padding as one more
    (its tokens see only padding, and their labels are -100); and the longest of them. In
    ``room`` (int32, at least :func:`_boundaries_size` int64 values) if given."""
    parts = []
    for lens, n in zip(seq_lens, lengths):
        parts.append(lens)
        if n < width:
            parts.append(np.array([width - n]))
    sizes = np.concatenate(parts)
    if room is None:
        room = torch.empty(len(sizes) + 1, dtype=torch.int32)
    starts = room[: len(sizes) + 1]
    starts_np = starts.numpy()
    starts_np[0] = 0
    np.cumsum(sizes, out=starts_np[1:], dtype=np.int32)
    return starts, int(sizes.max(initial=0))


def _mask_of(
    padding_free: bool, mask: str | None, block_mask: bool | None, hf_names: bool | None
) -> str | None:
    """The ``mask`` that the keywords ask for (the deprecated ones translated), or an error
    that says what to ask instead."""
    if block_mask is not None:
        mask = _from_block_mask(padding_free, mask, block_mask)
    if hf_names is not None:
        if not hf_names or mask is not None:
            raise GristmillError(
                "hf_names is deprecated: every batch without a mask (mask=None, the default) "
                "carries cu_seq_lens_q/k and max_length_q/k, and a batch with a mask none: "
                "leave hf_names out (pop the keys if your model refuses them)"
            )
        warnings.warn(
            "Collator(hf_names=True) is deprecated: every batch without a mask carries "
            "transformers' names; leave it out",
            DeprecationWarning,
            stacklevel=3,
        )
    if mask is not None and mask not in MASKS:
        raise GristmillError(f"Collator(mask={mask!r}): expected None or one of {list(MASKS)}")
    if padding_free and mask in ("bool", "additive"):
        raise GristmillError(
            f"Collator(padding_free=True, mask={mask!r}): a padding-free batch never holds a "
            "dense mask (one row of N tokens would need N x N). Leave mask out (the batch's "
            "positions and cu_seq_lens keep documents apart with every transformers "
            "attention), or pass mask='flex' (a FlexAttention BlockMask), or "
            f"padding_free=False for padded rows with the {mask} mask"
        )
    if padding_free and mask == "padding":
        raise GristmillError(
            "Collator(padding_free=True, mask='padding'): a padding-free batch has no padding "
            "to mask; pass padding_free=False, or leave mask out"
        )
    return mask


def _from_block_mask(padding_free: bool, mask: str | None, block_mask: bool) -> str | None:
    """The ``mask`` of the deprecated ``block_mask``, with a DeprecationWarning saying so."""
    if mask is not None:
        raise GristmillError("Collator: pass mask= alone (block_mask is deprecated)")
    if block_mask and padding_free:
        raise GristmillError(
            "Collator(block_mask=True) with a padding-free batch (padding_free=True) would be "
            "a dense N x N mask, which is gone: leave block_mask out (no mask; "
            "positions and cu_seq_lens keep documents apart with every transformers "
            "attention), pass mask='flex' for a FlexAttention BlockMask, or "
            "Collator(padding_free=False, mask='additive') for the former padded 4-D mask"
        )
    new = None if padding_free else ("additive" if block_mask else "padding")
    warnings.warn(
        f"Collator(block_mask={block_mask}) is deprecated: it is Collator("
        f"padding_free={padding_free}, mask={new!r}) now"
        + ("" if padding_free else "; padded rows without a mask (mask=None) are exact too"),
        DeprecationWarning,
        stacklevel=4,
    )
    return new


def _padding_free_for(model: Any) -> bool:
    """Whether :meth:`Collator.for_model` gives ``model`` one padding-free row (or padded
    rows), from its attention implementation; an error for one it does not know."""
    config = getattr(model, "config", None)
    if config is None:  # a DistributedDataParallel wrapper
        config = getattr(getattr(model, "module", None), "config", None)
    name = getattr(config, "_attn_implementation", None)
    if config is None or name is None:
        raise GristmillError(
            f"Collator.for_model takes a transformers model (it reads "
            f"model.config._attn_implementation); got {type(model).__name__}. For attention "
            "of your own: Collator(mask='flex') (a FlexAttention BlockMask) or "
            "Collator(padding_free=False, mask='bool') (scaled_dot_product_attention's mask)"
        )
    if name in BACKENDS:
        return BACKENDS[name]
    if _wraps_flash_attention(name):  # a kernel from the Hub behind transformers' varlen path
        return True
    raise GristmillError(
        f"Collator.for_model: attention implementation {name!r} is not one it knows to keep "
        f"packed documents apart: one of {sorted(BACKENDS)}, or a Hub kernel that transformers "
        "runs through its flash-attention path. Pick a collator yourself: Collator() (no "
        "mask: positions and cu_seq_lens), Collator(mask='flex'), or "
        "Collator(padding_free=False, mask='bool' or 'additive')"
    )


def _wraps_flash_attention(name: str) -> bool:
    """Whether transformers runs attention implementation ``name`` (a registered kernel)
    through its flash-attention forward, which reads ``cu_seq_lens_q/k``."""
    try:  # by name: transformers is an optional extra, untyped where it is missing
        flash = importlib.import_module("transformers.integrations.flash_attention")
        registry = importlib.import_module("transformers.modeling_utils").ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return False
    return name in registry and registry[name] is flash.flash_attention_forward


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
