"""Reading shards: map every file, check sizes against the manifest, serve documents by index."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import DatasetError


class MemmapShardReader:
    def __init__(self, directory: Path, shards: Sequence[dict[str, Any]], *, dtype: np.dtype):
        self.root = Path(directory).resolve()
        dtype = np.dtype(dtype).newbyteorder("<")
        self._tokens: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []
        for shard in shards:
            self._tokens.append(self._map(shard["tokens"], dtype, shard["num_tokens"]))
            self._offsets.append(self._map(shard["offsets"], "<i8", shard["num_documents"] + 1))
            mask = shard.get("mask")
            self._masks.append(None if mask is None else self._map(mask, "u1", shard["num_tokens"]))
        counts = np.fromiter((s["num_documents"] for s in shards), np.int64, len(shards))
        self._first_doc = np.concatenate([[0], np.cumsum(counts)])
        self.num_documents = int(self._first_doc[-1])

    def _map(self, entry: dict[str, Any], dtype: Any, count: int) -> np.ndarray:
        path = (self.root / entry["path"]).resolve()
        if not path.is_relative_to(self.root):
            raise DatasetError(f"{self.root}: manifest path {entry['path']!r} leaves the dataset")
        if not path.is_file():
            raise DatasetError(f"{path}: shard file is missing")
        expected = count * np.dtype(dtype).itemsize
        if path.stat().st_size != expected or entry["bytes"] != expected:
            raise DatasetError(
                f"{path}: {path.stat().st_size} bytes on disk, manifest expects {expected} "
                "(truncated or replaced shard; run `gristmill prepare` again)"
            )
        if count == 0:  # numpy cannot map an empty file
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(count,))

    def lengths(self) -> np.ndarray:
        if not self._offsets:
            return np.zeros(0, np.int64)
        return np.concatenate([np.diff(o) for o in self._offsets]).astype(np.int64)

    def document(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} out of range for {self.num_documents} documents")
        shard = int(np.searchsorted(self._first_doc, index, side="right")) - 1
        j = index - int(self._first_doc[shard])
        offsets = self._offsets[shard]
        start, end = int(offsets[j]), int(offsets[j + 1])
        mask = self._masks[shard]
        return self._tokens[shard][start:end], None if mask is None else mask[start:end]
