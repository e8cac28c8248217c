"""gristmill-megatron: export a prepared gristmill dataset to Megatron-LM's indexed format.

``gristmill export DIR --to megatron -o OUT`` writes, per split, ``OUT/SPLIT.bin`` and
``OUT/SPLIT.idx``; Megatron-LM reads them with ``--data-path OUT/SPLIT`` (or
``megatron.core.datasets.indexed_dataset.IndexedDataset("OUT/SPLIT")``). Every gristmill document
becomes one Megatron sequence and one document, token for token, in the dataset's order. See
:mod:`gristmill_megatron.indexed` for the format and the README for the choices made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import DatasetError
from gristmill.plugin.components import ExporterType, ShardReader
from gristmill_megatron.indexed import (
    INT32_LIMIT,
    bin_path,
    idx_path,
    token_dtype,
    write_index,
)

__all__ = ["export_megatron", "gristmill_exporters"]

BATCH_TOKENS = 1 << 23  # tokens read and written at a time: 16-32 MiB, whatever the documents
WRITE_BUFFER = 1 << 24


def export_megatron(
    dataset: Any,
    directory: Path,
    *,
    progress: bool = False,
    batch_tokens: int = BATCH_TOKENS,
    **context: Any,  # what gristmill passes that this exporter does not use
) -> dict[str, Any]:
    """Write ``dataset`` (one split of a :class:`gristmill.Dataset`) as ``SPLIT.bin`` and
    ``SPLIT.idx`` in ``directory``; return a summary of what was written.

    Streams the tokens ``batch_tokens`` at a time, so memory is a few batches plus 8 bytes per
    document (the offsets the index is built from), whatever the size of the split. Raises
    :class:`~gristmill.errors.DatasetError` for a split Megatron's format cannot hold: one with
    loss masks, ids that do not fit Megatron's int32, a document longer than 2**31 - 1 tokens.
    """
    split: str = dataset.split
    where = f"{dataset.path}: split {split!r}"
    if not split or split != Path(split).name or split.startswith("."):
        raise DatasetError(f"{where}: the split name is not a plain file name for .bin/.idx")
    entry = dataset.manifest["splits"][split]
    num_tokens, num_loss = entry["num_tokens"], entry["num_loss_tokens"]
    if num_loss < num_tokens:
        raise _masked(where, f"{num_tokens - num_loss:,} of {num_tokens:,}")
    vocab_size = dataset.manifest["tokenizer"].get("vocab_size")
    if vocab_size is not None and vocab_size > INT32_LIMIT:
        raise DatasetError(
            f"{where}: a vocabulary of {vocab_size:,} ids does not fit Megatron's int32 token ids"
        )
    dtype = token_dtype(vocab_size)
    documents: ShardReader = dataset.documents

    lengths = documents.lengths()
    if len(lengths) and int(lengths.max()) >= INT32_LIMIT:
        doc = int(lengths.argmax())
        raise DatasetError(
            f"{where}: document {doc} has {int(lengths[doc]):,} tokens; Megatron stores "
            "sequence lengths as int32 (at most 2,147,483,647). Prepare the data again with "
            "--max-doc-tokens to cut it"
        )
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    del lengths  # the offsets hold the same information: one array of 8 bytes a document
    total = int(offsets[-1])

    prefix = Path(directory) / split
    from tqdm.auto import tqdm

    with (
        open(bin_path(prefix), "wb", buffering=WRITE_BUFFER) as out,
        tqdm(
            total=total,
            unit="tok",
            unit_scale=True,
            desc=f"megatron {split}",
            disable=not progress,
        ) as bar,
    ):
        for tokens, mask in _batches(documents, offsets, batch_tokens):
            if mask is not None and not mask.all():  # the manifest said none: trust the data
                raise _masked(where, "some")
            if vocab_size is not None and len(tokens) and int(tokens.max()) >= vocab_size:
                raise DatasetError(
                    f"{where}: token id {int(tokens.max())} is outside the vocabulary of "
                    f"{vocab_size:,} ids; run `gristmill verify {dataset.path}`"
                )
            out.write(np.ascontiguousarray(tokens, dtype).data)
            bar.update(len(tokens))
        if total == 0:
            # numpy (and so Megatron's reader) cannot map an empty file: one unused token keeps
            # an empty split openable. No sequence points at it.
            out.write(np.zeros(1, dtype).data)
        bin_bytes = out.tell()
    idx_bytes = write_index(idx_path(prefix), offsets, dtype)

    return {
        "prefix": split,
        "files": [bin_path(prefix).name, idx_path(prefix).name],
        "documents": len(offsets) - 1,
        "tokens": total,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "bytes": {"bin": bin_bytes, "idx": idx_bytes},
    }


def _masked(where: str, count: str) -> DatasetError:
    """The refusal of a split where ``count`` tokens carry no loss: Megatron would train on
    them."""
    return DatasetError(
        f"{where} has loss masks: {count} tokens carry no loss (prompts, or the system and "
        "user turns of chats). Megatron's indexed format stores no mask, so Megatron would "
        "train on those tokens too. To train on every token, prepare the data again with "
        "--train-on-prompt and export that; to keep the masks, train with gristmill's own "
        "loader (gristmill.torch.dataloader), or export only the splits without masks (--split)"
    )


def _batches(
    documents: ShardReader, offsets: np.ndarray, batch_tokens: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The split's tokens in order, ``batch_tokens`` at a time (the last batch shorter), with
    their loss mask (``None`` where the reader has none).

    A batch is a range of the concatenated token stream: a document longer than a batch is read
    in pieces, so memory never depends on document sizes.
    """
    total = int(offsets[-1])
    spans = getattr(documents, "spans", None)
    for lo in range(0, total, batch_tokens):
        hi = min(lo + batch_tokens, total)
        # The documents holding tokens lo and hi - 1 ("right": past any empty document).
        first, last = (np.searchsorted(offsets, [lo, hi - 1], "right") - 1).tolist()
        docs = np.arange(first, last + 1, dtype=np.int64)
        begin = offsets[first : last + 1]
        starts = np.maximum(lo - begin, 0)
        lengths = np.minimum(hi, offsets[first + 1 : last + 2]) - begin - starts
        if spans is not None:
            yield spans(docs, starts, lengths)
        else:
            yield _read_documents(documents, docs, starts, lengths)


def _read_documents(
    documents: ShardReader, docs: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """What ``spans`` returns, from a reader that only has ``document(i)``."""
    ids, masks = [], []
    for doc, start, length in zip(docs.tolist(), starts.tolist(), lengths.tolist()):
        tokens, mask = documents.document(doc)
        ids.append(tokens[start : start + length])
        masks.append(None if mask is None else mask[start : start + length])
    if all(m is None for m in masks):
        return np.concatenate(ids), None
    filled = [np.ones(len(t), np.uint8) if m is None else m for t, m in zip(ids, masks)]
    return np.concatenate(ids), np.concatenate(filled)


@hookimpl
def gristmill_exporters() -> list[ExporterType]:
    return [
        ExporterType(
            name="megatron",
            description="Megatron-LM indexed dataset (.bin/.idx per split), read by "
            "megatron.core IndexedDataset",
            export=export_megatron,
            options={"batch_tokens": f"tokens read and written at a time (default {BATCH_TOKENS})"},
        )
    ]
