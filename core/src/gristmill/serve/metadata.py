"""The metadata of a split's documents, as prepare stored it (:mod:`gristmill.store.metadata`).

A column's files are checked against the manifest's SHA-256 before their first use, then mapped:
reading the values of some documents reads only their pages, and a string table is decoded only
for the codes asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.store.integrity import check_intact
from gristmill.store.metadata import NULLS


class DocumentMetadata:
    """The metadata columns of one split of the dataset at ``path`` (``manifest``: its
    manifest). ``columns`` maps each key to its type: ``bool``, ``int``, ``float`` or
    ``string``."""

    def __init__(self, path: Path, manifest: Mapping[str, Any], split: str):
        self.path = path
        self._columns = manifest.get("metadata", {})
        self._files = manifest["splits"][split].get("metadata", {})
        self.columns: dict[str, str] = {key: c["type"] for key, c in self._columns.items()}
        self._values: dict[str, np.ndarray] = {}
        self._tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._codes: dict[str, dict[str, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Mapped files and decoded tables stay in their process: a copy maps its own.
        return {**vars(self), "_values": {}, "_tables": {}, "_codes": {}}

    def values(self, key: str, docs: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Column ``key``'s stored values of documents ``docs`` (all, in a read-only map,
        when ``None``): ``bool`` as int8 0/1, ``int`` as int64, ``float`` as float64, ``string``
        as int32 codes (:meth:`decode`, :meth:`code`); null is -1, the smallest int64
        (``NULL_INT``), NaN and -1."""
        if key not in self._values:
            self._check(key)
            self._values[key] = self._load(self._files[key])
        stored = self._values[key]
        return stored if docs is None else stored[np.asarray(docs, np.int64)]

    def decode(self, key: str, values: Iterable[Any]) -> list[Any]:
        """Stored values of column ``key`` (as :meth:`values` gives them) as Python values:
        ``True``/``False``, ints, floats, strings; ``None`` for null."""
        kind = self._kind(key)
        values = np.asarray(values)
        null = values != values if kind == "float" else values == NULLS[kind]
        if kind == "string":
            blob, offsets = self._table(key)
            decoded: list[Any] = [
                None if n else blob[offsets[c] : offsets[c + 1]].tobytes().decode("utf-8")
                for c, n in zip(values.tolist(), null.tolist())
            ]
            return decoded
        if kind == "bool":
            return [None if n else bool(v) for v, n in zip(values.tolist(), null.tolist())]
        return [None if n else v for v, n in zip(values.tolist(), null.tolist())]

    def row(self, doc: int) -> dict[str, Any]:
        """Document ``doc``'s metadata: every column's value (``None`` where it has none)."""
        return {key: self.decode(key, self.values(key, [doc]))[0] for key in self.columns}

    def code(self, key: str, text: str) -> int:
        """The code of string ``text`` in column ``key`` (-1 when no document holds it), to
        compare with :meth:`values` (``ds.metadata_values("lang") == ds.metadata_code("lang",
        "en")``). The column's table is read into a dict on the first call."""
        if self._kind(key) != "string":
            raise TypeError(f"metadata column {key!r} holds {self.columns[key]}s, not strings")
        if key not in self._codes:
            blob, offsets = self._table(key)
            data = blob.tobytes()
            cuts = enumerate(pairwise(offsets.tolist()))
            self._codes[key] = {data[a:b].decode("utf-8"): c for c, (a, b) in cuts}
        return self._codes[key].get(text, -1)

    def _kind(self, key: str) -> str:
        self._check(key)
        return self.columns[key]

    def _check(self, key: str) -> None:
        if key not in self.columns:
            known = ", ".join(sorted(self.columns)) or "none: it was prepared from records without"
            raise KeyError(f"no metadata column {key!r} in {self.path}; its columns: {known}")

    def _table(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._tables:
            column = self._columns[key]
            offsets = self._load(column["offsets"])
            check_intact(self.path, column["strings"])
            strings = self.path / column["strings"]["path"]
            blob = (
                np.memmap(strings, np.uint8, mode="r")
                if column["strings"]["bytes"]
                else np.zeros(0, np.uint8)
            )
            self._tables[key] = blob, offsets
        return self._tables[key]

    def _load(self, entry: Mapping[str, Any]) -> np.ndarray:
        check_intact(self.path, entry)
        return np.load(self.path / entry["path"], mmap_mode="r", allow_pickle=False)
