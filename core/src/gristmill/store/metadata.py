"""Metadata per document: typed columns that prepare's tasks keep and the merge makes whole.

A document's metadata is its record's ``metadata`` object and the columns named by
``metadata_columns`` (:mod:`gristmill.ingest.mapping`), as (key, value) pairs. Each key becomes a
column of one type, chosen from the values it holds across the whole dataset:

======== ================ ================================================================
type     values file      null
======== ================ ================================================================
bool     int8: 0, 1       -1
int      int64            ``NULL_INT`` (the smallest int64)
float    float64          NaN
string   int32 codes      -1; code ``c`` is string ``c`` of the column's table
======== ================ ================================================================

Values of one kind keep it; ints among floats become floats; any other mix (or an int beyond
int64) makes a string column, where a value that is not a string is held as its JSON text
(``true``, ``3``, ``2.5``). A column whose values are all null is a string column with an empty
table.

A task writes, per split, one ``.npz`` of its columns in its own types, with its own string
tables (:class:`ColumnLog`). The merge (:func:`merge_columns`) joins the types, numbers every
column's strings once for the whole dataset in the order they first appear (task by task, so
the codes do not depend on the number of workers) and writes, per split and column, one
``.npy`` of every document's value in the split's order, and per string column its table:
``NNNN.strings`` (the strings' UTF-8 bytes, one after another) and ``NNNN.offsets.npy`` (int64,
where each starts, then the end). Nothing holds a value per document in Python beyond one task.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gristmill.errors import DatasetError
from gristmill.layout import METADATA_DIR
from gristmill.plugin.atomic import sync_directory, write_atomic
from gristmill.plugin.components import Problem
from gristmill.store.manifest import METADATA_TYPES, file_entry
from gristmill.store.stats import MetadataStats

NULL_INT = int(np.iinfo(np.int64).min)
NULL_CODE = -1
DTYPES = dict(zip(METADATA_TYPES, map(np.dtype, ("<i1", "<i8", "<f8", "<i4"))))
NULLS: dict[str, Any] = {"bool": -1, "int": NULL_INT, "float": np.nan, "string": NULL_CODE}
INT_RANGE = (NULL_INT + 1, int(np.iinfo(np.int64).max))
COUNT_BLOCK = 1 << 20  # documents whose values the statistics count at once


def kind_of(value: Any) -> str | None:
    """The column type one value asks for (``None``: null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if INT_RANGE[0] <= value <= INT_RANGE[1] else "string"
    if isinstance(value, float):
        return "float"
    return "string"


def join(kinds: Iterator[str] | Sequence[str] | set[str]) -> str:
    """The type of a column whose values ask for ``kinds`` (see the module's table)."""
    found = set(kinds) - {"null"}
    if len(found) == 1:
        return found.pop()
    return "float" if found == {"int", "float"} else "string"


def text_of(value: Any) -> str:
    """A value as a string column holds it: a string itself, anything else its JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, float)):
        return json.dumps(value)
    return str(value)


@dataclass
class ColumnLog:
    """The metadata of one task's documents in one split, kept as they come: per key, the
    documents that hold a value and the values (a task's share of the dataset at most)."""

    count: int = 0
    docs: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, metadata: tuple[tuple[str, Any], ...] | None) -> None:
        """The next document's metadata pairs (``None``: it has none)."""
        for key, value in metadata or ():
            if key not in self.docs:
                self.docs[key], self.values[key] = [], []
            self.docs[key].append(self.count)
            self.values[key].append(value)
        self.count += 1

    def save(self, path: Path) -> dict[str, str] | None:
        """Write the columns to ``path`` (``.npz``) unless there are none; their types by key."""
        if not self.docs:
            return None
        kinds: dict[str, str] = {}
        arrays: dict[str, Any] = {}
        for i, key in enumerate(sorted(self.docs)):
            present = [(d, v) for d, v in zip(self.docs[key], self.values[key]) if v is not None]
            kind = join(k for _, v in present if (k := kind_of(v)) is not None)
            kinds[key] = kind if present else "null"
            if present:
                arrays.update(_task_arrays(i, kind, present, self.count))
        write_atomic(path, lambda f: np.savez(f, **arrays), sync_directory_too=False)
        return kinds


def _task_arrays(
    i: int, kind: str, present: list[tuple[int, Any]], count: int
) -> dict[str, np.ndarray]:
    """Column ``i`` of a task: its values (``v{i}``) in type ``kind``, null where a document
    holds none; for strings also its table (``s{i}``, ``o{i}``: see :func:`pack_strings`)."""
    values = np.full(count, NULLS[kind], DTYPES[kind])
    docs = np.fromiter((d for d, _ in present), np.int64, len(present))
    if kind != "string":
        values[docs] = [v for _, v in present]
        return {f"v{i}": values}
    codes: dict[str, int] = {}
    values[docs] = [codes.setdefault(text_of(v), len(codes)) for _, v in present]
    blob, offsets = pack_strings(list(codes))
    return {f"v{i}": values, f"s{i}": blob, f"o{i}": offsets}


def pack_strings(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as a table: their UTF-8 bytes one after another (uint8), and where each starts,
    then the end (int64)."""
    encoded = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8), offsets


@dataclass
class TaskColumns:
    """One task's columns in one split, as :meth:`ColumnLog.save` wrote them; ``kept``: the
    documents deduplication kept (``None``: all)."""

    path: Path
    kinds: dict[str, str]
    kept: np.ndarray | None = None

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Column ``key``'s values (those kept), and for strings its table (else empty arrays);
        ``None`` when the task holds only nulls for it."""
        if self.kinds[key] == "null":
            return None
        i = sorted(self.kinds).index(key)
        with np.load(self.path, allow_pickle=False) as stored:
            values = stored[f"v{i}"]
            blob, offsets = (
                (stored[f"s{i}"], stored[f"o{i}"])
                if f"s{i}" in stored
                else (np.zeros(0, np.uint8), np.zeros(1, np.int64))
            )
        return (values if self.kept is None else values[self.kept]), blob, offsets


@dataclass
class PartColumns:
    """A task's documents in a split, in the merge's order: the split, how many documents it
    keeps, and its columns (``None``: none of them has metadata)."""

    split: str
    documents: int
    columns: TaskColumns | None


@dataclass
class MergedColumns:
    """The manifest's ``metadata`` (per column: type, string table), each split's entries (per
    column: its values file), and the statistics of the values."""

    columns: dict[str, dict[str, Any]]
    splits: dict[str, dict[str, dict[str, Any]]]
    stats: dict[str, Any]


def merge_columns(
    out_dir: Path, parts: Sequence[PartColumns], lengths: Mapping[str, np.ndarray]
) -> MergedColumns | None:
    """Write every column's files (see the module's docstring) from the tasks' ``parts``, in
    task order; ``lengths``: each split's document lengths, for the statistics. ``None`` when no
    document has metadata: nothing is written."""
    kinds: dict[str, set[str]] = {}
    for part in parts:
        for key, kind in (part.columns.kinds if part.columns else {}).items():
            kinds.setdefault(key, set()).add(kind)
    if not kinds:
        return None
    folder = out_dir / METADATA_DIR
    shutil.rmtree(folder, ignore_errors=True)  # a killed merge's files: this one rewrites them
    merged = MergedColumns({}, {split: {} for split in lengths}, {})
    stats = MetadataStats()
    for index, key in enumerate(sorted(kinds)):
        column = _Column(out_dir, index, key, join(kinds[key]), parts)
        merged.columns[key] = column.describe()
        for split in lengths:
            merged.splits[split][key] = column.write_split(split)
        column.count(stats, lengths)
    for directory in (folder, *(folder / split for split in lengths)):
        sync_directory(directory)
    merged.stats = stats.summary()
    return merged


class _Column:
    """One column being merged: its type, its string table (for strings), its files."""

    def __init__(
        self, out_dir: Path, index: int, key: str, kind: str, parts: Sequence[PartColumns]
    ):
        self.out_dir, self.key, self.kind, self.parts = out_dir, key, kind, parts
        self.name = f"{index:04d}"
        self.table: _Table | None = _Table(self) if kind == "string" else None

    def part_values(self, k: int) -> np.ndarray:
        """Part ``k``'s values of this column, in its final type (string codes for the whole
        dataset)."""
        part = self.parts[k]
        loaded = self.load(k)
        if loaded is None:
            return np.full(part.documents, NULLS[self.kind], DTYPES[self.kind])
        if self.table is not None:
            local = self.table.local(k, loaded)[0]
            codes = np.full(len(local), NULL_CODE, DTYPES["string"])
            present = local >= 0
            codes[present] = self.table.codes[k][local[present]]
            return codes
        values = loaded[0]
        if self.kind == "float" and values.dtype.kind == "i":
            return np.where(values == NULL_INT, np.nan, values.astype(np.float64))
        return values.astype(DTYPES[self.kind])

    def load(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """What part ``k`` stored of this column (see :meth:`TaskColumns.load`)."""
        columns = self.parts[k].columns
        if columns is None or self.key not in columns.kinds:
            return None
        return columns.load(self.key)

    def part_kind(self, k: int) -> str:
        columns = self.parts[k].columns
        return "null" if columns is None else columns.kinds.get(self.key, "null")

    def write_split(self, split: str) -> dict[str, Any]:
        relative = f"{METADATA_DIR}/{split}/{self.name}.npy"
        chosen = [k for k, part in enumerate(self.parts) if part.split == split]
        total = sum(self.parts[k].documents for k in chosen)

        def write(f: BinaryIO) -> None:
            header = {"descr": DTYPES[self.kind].str, "fortran_order": False, "shape": (total,)}
            np.lib.format.write_array_header_1_0(f, header)
            for k in chosen:
                f.write(self.part_values(k).tobytes())

        (self.out_dir / METADATA_DIR / split).mkdir(parents=True, exist_ok=True)
        write_atomic(self.out_dir / relative, write, sync_directory_too=False)
        return file_entry(self.out_dir, relative)

    def describe(self) -> dict[str, Any]:
        """The column's entry in the manifest (its table written first, for strings)."""
        if self.table is None:
            return {"type": self.kind}
        return {"type": self.kind, **self.table.write()}

    def count(self, stats: MetadataStats, lengths: Mapping[str, np.ndarray]) -> None:
        """Documents and tokens per value into ``stats``: the first ``MAX_VALUES`` values in the
        order they first appear, the rest together (floats are not counted by value); read a
        block of documents at a time."""
        if self.kind == "float":
            return
        top = MetadataStats.MAX_VALUES
        seen: list[Any] = []  # the values counted on their own, in the order they appear
        documents, tokens = np.zeros(top + 1, np.int64), np.zeros(top + 1, np.float64)
        for split, split_lengths in lengths.items():
            stored = self.read(split)
            for lo in range(0, len(stored), COUNT_BLOCK):
                values = np.asarray(stored[lo : lo + COUNT_BLOCK])
                present = values != NULLS[self.kind]
                values, weights = values[present], split_lengths[lo : lo + COUNT_BLOCK][present]
                if not len(values):
                    continue
                if len(seen) < top:
                    distinct, first = np.unique(values, return_index=True)
                    # The first `top` to appear hold any value not seen yet that is counted.
                    firsts = distinct[np.argsort(first)[:top]].tolist()
                    new = [v for v in firsts if v not in seen]
                    seen += new[: top - len(seen)]
                keys = np.array(seen, values.dtype)  # not empty: the block's first is in it
                order = np.argsort(keys)
                at = np.minimum(np.searchsorted(keys[order], values), len(keys) - 1)
                slots = np.where(keys[order][at] == values, order[at], top)
                documents += np.bincount(slots, minlength=top + 1)
                tokens += np.bincount(slots, weights=weights, minlength=top + 1)
        shown: list[Any] = seen
        if self.table is not None:
            shown = self.table.texts(seen)
        elif self.kind == "bool":
            shown = [bool(v) for v in seen]
        for slot, value in enumerate([*shown, MetadataStats.OTHER]):
            if documents[slot]:
                stats.add(self.key, value, int(documents[slot]), int(tokens[slot]))

    def read(self, split: str) -> np.ndarray:
        return np.load(self.out_dir / METADATA_DIR / split / f"{self.name}.npy", mmap_mode="r")


class _Table:
    """A string column's table for the whole dataset: every part's strings numbered once, in the
    order they first appear. Per part, ``codes[k][local]`` is the code of its local string."""

    def __init__(self, column: _Column):
        self.column = column
        digests = []
        for k in range(len(column.parts)):
            blob, offsets = self.local(k)[1:]
            digests.append(
                np.array(
                    [_digest(blob[a:b]) for a, b in pairwise(offsets.tolist())],
                    dtype="V16",
                ).reshape(-1)
            )
        every = np.concatenate([np.zeros(0, "V16"), *digests])
        _, first, inverse = np.unique(every, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        code = rank[inverse.reshape(-1)]
        is_first = first[inverse.reshape(-1)] == np.arange(len(every))
        bounds = list(pairwise(np.cumsum([0] + [len(d) for d in digests]).tolist()))
        self.codes = [code[a:b] for a, b in bounds]
        self.new = [is_first[a:b] for a, b in bounds]
        self.size = len(order)
        self.offsets = np.zeros(1, np.int64)
        self.strings = ""

    def local(
        self, k: int, loaded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Part ``k``'s codes and table of this column (``loaded``: what it stored, when read
        already), its values turned to strings where it holds another type."""
        column = self.column
        loaded = loaded if loaded is not None else column.load(k)
        if loaded is None:
            return np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(1, np.int64)
        kind = column.part_kind(k)
        return loaded if kind == "string" else _as_strings(loaded[0], kind)

    def write(self) -> dict[str, Any]:
        """Write the table's two files, a part at a time; their manifest entries, and its
        size."""
        out_dir, name = self.column.out_dir, self.column.name
        sizes = []

        def strings(f: BinaryIO) -> None:
            for k in range(len(self.column.parts)):
                _, blob, offsets = self.local(k)
                new = np.flatnonzero(self.new[k])
                sizes.append(offsets[new + 1] - offsets[new])
                f.write(b"".join(blob[offsets[j] : offsets[j + 1]].tobytes() for j in new))

        (out_dir / METADATA_DIR).mkdir(exist_ok=True)
        self.strings = f"{METADATA_DIR}/{name}.strings"
        starts = f"{METADATA_DIR}/{name}.offsets.npy"
        write_atomic(out_dir / self.strings, strings, sync_directory_too=False)
        self.offsets = np.zeros(self.size + 1, np.int64)
        np.cumsum(np.concatenate([np.zeros(0, np.int64), *sizes]), out=self.offsets[1:])
        write_atomic(out_dir / starts, lambda f: np.save(f, self.offsets), sync_directory_too=False)
        return {
            "strings": file_entry(out_dir, self.strings),
            "offsets": file_entry(out_dir, starts),
            "distinct": self.size,
        }

    def texts(self, codes: Sequence[int]) -> list[str]:
        """Strings ``codes`` of the table, once it is written."""
        path = self.column.out_dir / self.strings
        data = np.memmap(path, np.uint8, mode="r") if self.offsets[-1] else np.zeros(0, np.uint8)
        cuts = self.offsets
        return [data[cuts[c] : cuts[c + 1]].tobytes().decode("utf-8") for c in codes]


def _digest(data: np.ndarray) -> bytes:
    return hashlib.blake2b(data.tobytes(), digest_size=16).digest()


def _as_strings(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values of type ``kind`` as string codes and a table (their texts, in the order they
    first appear), for a column that is strings in the whole dataset."""
    present = ~np.isnan(values) if kind == "float" else values != NULLS[kind]
    distinct, first, inverse = np.unique(values[present], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    codes = np.full(len(values), NULL_CODE, DTYPES["string"])
    codes[present] = rank[inverse.reshape(-1)]
    as_python = distinct[order].tolist()
    if kind == "bool":
        as_python = [bool(v) for v in as_python]
    blob, offsets = pack_strings([text_of(v) for v in as_python])
    return codes, blob, offsets


def check_record(entry: Mapping[str, Any], where: str) -> None:
    """Refuse a task record's split ``entry`` whose metadata an older gristmill wrote (one table
    of rows; this one keeps typed columns)."""
    if "metadata" in entry and "metadata_columns" not in entry:
        raise DatasetError(
            f"{where}: written by an older gristmill, which kept metadata otherwise; prepare "
            "again with --overwrite"
        )


def column_problems(root: Path, manifest: Mapping[str, Any]) -> Iterator[Problem]:
    """What is wrong with the intact metadata files of a well-formed manifest: a values file of
    another type or length than its column and split say, a code outside its table, a table
    whose offsets do not cut its strings."""
    for key, column in manifest.get("metadata", {}).items():
        kind = column["type"]
        if kind == "string":
            yield from _table_problems(root, column)
        for entry in manifest["splits"].values():
            yield from _values_problems(root, entry, key, column)


def _values_problems(
    root: Path, split: Mapping[str, Any], key: str, column: Mapping[str, Any]
) -> Iterator[Problem]:
    path = split["metadata"][key]["path"]
    kind, count = column["type"], split["num_documents"]
    try:
        values = np.load(root / path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        yield Problem(path, f"not a .npy file ({exc})")
        return
    if values.dtype != DTYPES[kind] or values.shape != (count,):
        yield Problem(
            path,
            f"{values.dtype} of shape {values.shape}, but the {kind} column {key!r} holds "
            f"{DTYPES[kind]} of shape ({count},)",
        )
    elif kind in ("string", "bool") and count:
        top = column["distinct"] if kind == "string" else 2
        if values.min() < -1 or values.max() >= top:
            yield Problem(path, f"a value outside -1 to {top - 1} in the {kind} column {key!r}")


def _table_problems(root: Path, column: Mapping[str, Any]) -> Iterator[Problem]:
    path = column["offsets"]["path"]
    try:
        offsets = np.load(root / path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        yield Problem(path, f"not a .npy file ({exc})")
        return
    size, distinct = column["strings"]["bytes"], column["distinct"]
    if (
        offsets.dtype != np.dtype("<i8")
        or offsets.shape != (distinct + 1,)
        or offsets[0] != 0
        or offsets[-1] != size
        or np.any(np.diff(offsets) < 0)
    ):
        yield Problem(
            path,
            f"not the offsets of {distinct} strings in {size} bytes (int64, from 0 up to {size})",
        )
