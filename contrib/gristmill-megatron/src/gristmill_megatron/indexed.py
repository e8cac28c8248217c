"""Megatron-LM's indexed dataset format (``MMapIndexedDataset``), as megatron-core reads it.

A dataset is a pair of files with one path prefix:

- ``PREFIX.bin``: every sequence's token ids, concatenated, headerless, little-endian;
- ``PREFIX.idx``: little-endian throughout:

  ========================  ==========================================================
  9 bytes                   the magic ``b"MMIDIDX\\x00\\x00"``
  uint64                    version, always 1
  uint8                     the token dtype's code (:data:`DTYPE_CODES`)
  uint64                    ``S``, the number of sequences
  uint64                    ``D``, the number of document indices (documents + 1)
  int32 × S                 each sequence's length in tokens
  int64 × S                 each sequence's byte offset in ``.bin``
  int64 × D                 document indices: document ``k`` is sequences
                            ``[indices[k], indices[k+1])``; the first is 0, the last ``S``
  ========================  ==========================================================

(Multimodal datasets append an int8 mode per sequence; this module never writes one.)

Megatron's tools pick the token dtype from the vocabulary size (``DType.optimal_dtype``):
``uint16`` when it is below 65,500, else ``int32``. :func:`token_dtype` follows the same rule,
so an export is byte-for-byte what ``tools/preprocess_data.py`` would write for the same ids.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# megatron.core.datasets.indexed_dataset.DType: the codes of the two dtypes token data uses.
DTYPE_CODES = {"uint16": 8, "int32": 4}
UINT16_BELOW = 65_500  # Megatron's threshold: uint16 for a vocabulary smaller than this
INT32_LIMIT = 2**31  # token ids, sequence lengths: Megatron stores both as int32
INDEX_CHUNK = 1 << 20  # documents per write when streaming the index (bounded memory)


def token_dtype(vocab_size: int | None) -> np.dtype:
    """The little-endian dtype Megatron uses for ids of a vocabulary of ``vocab_size``.

    ``None`` (an unknown size) gives ``int32``, as in Megatron.
    """
    if vocab_size is not None and vocab_size < UINT16_BELOW:
        return np.dtype("<u2")
    return np.dtype("<i4")


def dtype_code(dtype: np.dtype) -> int:
    """The code of ``dtype`` in the ``.idx`` header (Megatron's ``DType`` enum)."""
    return DTYPE_CODES[np.dtype(dtype).name]


def write_index(path: str | os.PathLike[str], offsets: np.ndarray, dtype: np.dtype) -> int:
    """Write ``PATH`` (an ``.idx``) for one sequence and one document per ``offsets`` step.

    ``offsets`` are int64 token offsets into ``.bin``: sequence ``j`` is tokens
    ``offsets[j]:offsets[j+1]`` (so ``offsets[0] == 0`` and there is one more offset than
    sequences). The index is written in chunks of :data:`INDEX_CHUNK` sequences, so memory stays
    a small multiple of a chunk whatever the number of documents. Returns the file's size.
    """
    dtype = np.dtype(dtype)
    count = len(offsets) - 1
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<QB", VERSION, dtype_code(dtype)))
        f.write(struct.pack("<QQ", count, count + 1))
        for lo in range(0, count, INDEX_CHUNK):
            hi = min(lo + INDEX_CHUNK, count)
            f.write(np.diff(offsets[lo : hi + 1]).astype("<i4").data)
        for lo in range(0, count, INDEX_CHUNK):
            hi = min(lo + INDEX_CHUNK, count)
            f.write((offsets[lo:hi] * dtype.itemsize).astype("<i8").data)
        # Document indices 0..count: each document is exactly one sequence.
        for lo in range(0, count + 1, INDEX_CHUNK):
            f.write(np.arange(lo, min(lo + INDEX_CHUNK, count + 1), dtype="<i8").data)
        return f.tell()


def index_size(sequences: int) -> int:
    """The size in bytes of the ``.idx`` of ``sequences`` sequences, one document each."""
    return len(MAGIC) + 8 + 1 + 8 + 8 + sequences * (4 + 8) + (sequences + 1) * 8


def bin_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".bin")


def idx_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".idx")
