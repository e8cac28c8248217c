"""Writing shards: each file lands under a temporary name, is synced, then renamed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import DataError
from gristmill.plugin.atomic import write_atomic


class MemmapShardWriter:
    def __init__(
        self,
        directory: Path,
        split: str,
        *,
        dtype: np.dtype,
        tokens_per_shard: int,
        prefix: str = "",
    ):
        self.root = directory
        self.split_dir = directory / split
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.tokens_per_shard = tokens_per_shard
        self.prefix = prefix
        self.entries: list[dict[str, Any]] = []
        self._ids: list[np.ndarray] = []
        self._masks: list[np.ndarray | None] = []
        self._pending = 0

    def add(self, ids: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> None:
        for doc, mask in zip(ids, masks):
            self._ids.append(doc)
            self._masks.append(mask)
            self._pending += len(doc)
            # Documents are never split across shards; a shard ends at the first document
            # boundary past the target size.
            if self._pending >= self.tokens_per_shard:
                self._flush()

    def close(self) -> list[dict[str, Any]]:
        if self._ids:
            self._flush()
        return self.entries

    def _flush(self) -> None:
        ids, masks = self._ids, self._masks
        self._ids, self._masks, self._pending = [], [], 0
        tokens = np.concatenate(ids)
        limit = np.iinfo(self.dtype).max
        if len(tokens) and int(tokens.max()) > limit:
            raise DataError(f"token id {int(tokens.max())} does not fit the dataset's {self.dtype}")
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        offsets = np.zeros(len(ids) + 1, dtype="<i8")
        np.cumsum(lengths, out=offsets[1:])
        name = f"{self.prefix}{len(self.entries):05d}"
        loss_tokens = sum(len(d) if m is None else int(m.sum()) for d, m in zip(ids, masks))
        entry: dict[str, Any] = {
            "num_documents": len(ids),
            "num_tokens": len(tokens),
            "num_loss_tokens": loss_tokens,
            "tokens": self._write(f"{name}.tokens", tokens.astype(self.dtype, copy=False)),
            "offsets": self._write(f"{name}.offsets", offsets),
            "mask": None,
        }
        if any(m is not None for m in masks):
            mask = np.concatenate(
                [np.ones(len(d), np.uint8) if m is None else m for d, m in zip(ids, masks)]
            )
            entry["mask"] = self._write(f"{name}.mask", mask.astype(np.uint8, copy=False))
        self.entries.append(entry)

    def _write(self, filename: str, array: np.ndarray) -> dict[str, Any]:
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        # The caller syncs the directory once, before it records the shards.
        write_atomic(self.split_dir / filename, data, sync_directory_too=False)
        return {
            "path": f"{self.split}/{filename}",
            "bytes": data.nbytes,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
