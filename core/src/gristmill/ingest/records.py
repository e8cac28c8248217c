"""In-memory records as sources: what ``prepare`` and ``stream`` take besides source specs.

- a list or tuple of dicts, a ``pyarrow.Table`` or a ``datasets.Dataset``: cut into contiguous
  runs of rows like a file into byte ranges, and fingerprinted by content (a Dataset by its own
  ``_fingerprint``, which ``datasets`` derives from its content and transforms). A run sent to a
  worker process carries its own rows only, never the whole object;
- a ``datasets.IterableDataset``: cut by its shards, read again on every pass, but with no
  fingerprint;
- any other iterable of dicts (a generator, an iterator): read once, in one piece, in this
  process, with no fingerprint.

Without a fingerprint ``prepare`` cannot tell the records from an earlier run's, so it never finds
such a dataset up to date (and says so). A record's location is its index in the object given:
``records[3]``, ``table[3]``, ``dataset[3]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain, pairwise
from typing import TYPE_CHECKING, Any

from gristmill.errors import GristmillError
from gristmill.plugin.components import Source, Where

if TYPE_CHECKING:
    from typing import TypeAlias

    import datasets
    import pyarrow

    Spec: TypeAlias = str | os.PathLike[str]
    InMemory: TypeAlias = (
        Iterable[Mapping[str, Any]] | pyarrow.Table | datasets.Dataset | datasets.IterableDataset
    )
    Sources: TypeAlias = Spec | InMemory | Iterable[Spec | InMemory]

log = logging.getLogger("gristmill")

ROWS_PER_BATCH = (
    1024  # rows turned into Python objects at once: the library's per-call cost, amortised
)
_END = object()  # what an exhausted iterator gives
KINDS = "source specs, a list of dicts, a pyarrow Table, a datasets Dataset or IterableDataset"


def source_inputs(sources: Sources) -> list[str | os.PathLike[str] | Source]:
    """The ``sources`` argument of ``prepare`` and ``stream`` as a list of specs and sources.

    A string or path is one spec; a list whose first item is a dict is one source of records
    (an item further on that is not a dict is rejected as ``not-an-object``, as in a file);
    another list holds specs, Tables, Datasets or lists of records; any other iterable is read
    once, as records if its first item is a dict, else as specs.
    """
    if isinstance(sources, (str, os.PathLike)):
        return [sources]
    made = _library_object(sources)
    if made is not None:
        return [made]
    if isinstance(sources, Sequence):
        if sources and isinstance(sources[0], Mapping):
            return [RecordRows(sources, _LIST, f"<list of {_records(len(sources))}>", "records")]
        return [_one(item, position) for position, item in enumerate(sources)]
    if not isinstance(sources, Iterable):
        raise TypeError(f"sources must be {KINDS}; got {type(sources).__name__}")
    items = iter(sources)
    first = next(items, _END)
    if first is _END:
        return []
    if isinstance(first, Mapping):
        return [OneShot(chain([first], items))]
    return [_one(item, position) for position, item in enumerate(chain([first], items))]


def _one(item: Any, position: int) -> str | os.PathLike[str] | Source:
    """One item of a list of sources."""
    if isinstance(item, (str, os.PathLike)):
        return item
    if isinstance(item, Mapping) and not hasattr(item, "num_rows"):  # not a dict of splits
        raise TypeError(
            f"sources[{position}] is a record among source specs: give the records as a list of "
            "their own, e.g. ['data.jsonl', [{'text': ...}, ...]]"
        )
    made = _library_object(item)
    if made is not None:
        return made
    if isinstance(item, Sequence) and item and isinstance(item[0], Mapping):
        spec = f"<list of {_records(len(item))}, source {position}>"
        return RecordRows(item, _LIST, spec, f"sources[{position}]")
    raise TypeError(f"sources[{position}] must be one of {KINDS}; got {type(item).__name__}")


def _records(count: int) -> str:
    return f"{count:,} record{'' if count == 1 else 's'}"


def _library_object(value: Any) -> Source | None:
    """A source for a Table, Dataset or IterableDataset; refuses what looks like records but is
    not (a dict of splits, one record, a DataFrame) with what to give instead."""
    pyarrow, datasets, pandas = (sys.modules.get(m) for m in ("pyarrow", "datasets", "pandas"))
    if pyarrow is not None and isinstance(value, pyarrow.Table):
        return RecordRows(value, _TABLE, f"<pyarrow.Table of {value.num_rows:,} rows>", "table")
    if datasets is not None and isinstance(value, datasets.Dataset):
        return RecordRows(value, _DATASET, f"<datasets.Dataset of {len(value):,} rows>", "dataset")
    if datasets is not None and isinstance(value, datasets.IterableDataset):
        return ShardedRecords(value)
    if datasets is not None and isinstance(
        value, (datasets.DatasetDict, datasets.IterableDatasetDict)
    ):
        raise TypeError(
            f"sources is a dict of splits ({', '.join(value)}): give one split, e.g. ds['train']"
        )
    if isinstance(value, Mapping):
        raise TypeError("sources is one record (a dict): give a list of records, [{...}, ...]")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        raise TypeError(
            "sources is a pandas DataFrame: give pyarrow.Table.from_pandas(df), or "
            "df.to_dict('records')"
        )
    return None


class RecordRows:
    """A list of records, a Table or a Dataset, or a contiguous run of its rows; a
    :class:`~gristmill.plugin.components.Source` with a size (``HasSize``)."""

    def __init__(self, data: Any, access: _Access, spec: str, name: str):
        self.data, self.access, self.spec, self.name = data, access, spec, name
        self.base = 0  # the index, in the object given, of the first row of ``data``
        self.start, self.stop = 0, access.count(data)  # this source's rows, as indices there
        self._measured: tuple[str, int] | None = None  # (fingerprint, bytes), once

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        rows = self.access.rows(self.data, self.start - self.base, self.stop - self.base)
        for index, record in enumerate(rows, self.start):
            yield record, Where(f"{self.name}[{index}]")

    def split(self, pieces: int) -> list[RecordRows]:
        """Contiguous runs of about equal numbers of rows."""
        count = max(1, min(pieces, self.stop - self.start))
        bounds = [self.start + (self.stop - self.start) * i // count for i in range(count + 1)]
        return [self._run(a, b) for a, b in pairwise(bounds)]

    def _run(self, start: int, stop: int) -> RecordRows:
        run = copy.copy(self)
        run.start, run.stop, run._measured = start, stop, None
        return run

    def fingerprint(self) -> str:
        return self._measure()[0]

    def nbytes(self) -> int:
        return self._measure()[1]

    def _measure(self) -> tuple[str, int]:
        if self._measured is None:
            start, stop = self.start - self.base, self.stop - self.base
            self._measured = self.access.measure(self.data, start, stop)
        return self._measured

    def __getstate__(self) -> dict[str, Any]:
        # A worker process receives this run's rows only (see _Access.shipped).
        access, data, base = self.access.shipped(
            self.data, self.start - self.base, self.stop - self.base
        )
        return {**vars(self), "access": access, "data": data, "base": self.base + base}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, data=state["access"].received(state["data"]))


class _Access:
    """How :class:`RecordRows` reads one kind of object; rows are given as ``[start, stop)``."""

    def count(self, data: Any) -> int:
        return len(data)

    def rows(self, data: Any, start: int, stop: int) -> Iterator[Any]:
        return (data[i] for i in range(start, stop))

    def measure(self, data: Any, start: int, stop: int) -> tuple[str, int]:
        """A fingerprint of the rows' content, and their size in bytes."""
        digest, size = hashlib.sha256(), 0
        for i in range(start, stop):
            content = record_bytes(data[i])
            digest.update(len(content).to_bytes(8, "little") + content)
            size += len(content)
        return digest.hexdigest(), size

    def shipped(self, data: Any, start: int, stop: int) -> tuple[_Access, Any, int]:
        """What crosses to another process: an access, its data, and the offset of the data's
        first row from ``data``'s."""
        return self, data[start:stop], start

    def received(self, data: Any) -> Any:
        return data


class _TableAccess(_Access):
    def rows(self, data: Any, start: int, stop: int) -> Iterator[Any]:
        for batch in data.slice(start, stop - start).to_batches(max_chunksize=ROWS_PER_BATCH):
            yield from batch.to_pylist()

    def measure(self, data: Any, start: int, stop: int) -> tuple[str, int]:
        # The Arrow data itself: the same rows in other chunks hash differently, which only
        # costs preparing them again.
        rows = data.slice(start, stop - start)
        digest = hashlib.sha256(rows.schema.serialize())
        for batch in rows.to_batches(max_chunksize=ROWS_PER_BATCH):
            digest.update(batch.serialize())
        return digest.hexdigest(), int(rows.nbytes)

    def shipped(self, data: Any, start: int, stop: int) -> tuple[_Access, Any, int]:
        # Pickling a slice of a Table writes all of its buffers; the IPC format writes the slice.
        import pyarrow

        sink = pyarrow.BufferOutputStream()
        rows = data.slice(start, stop - start)
        with pyarrow.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        return self, sink.getvalue().to_pybytes(), start

    def received(self, data: Any) -> Any:
        import pyarrow

        return pyarrow.ipc.open_stream(data).read_all()


class _DatasetAccess(_Access):
    def rows(self, data: Any, start: int, stop: int) -> Iterator[Any]:
        # Plain Python values whatever format the user set (numpy, torch), as from a file.
        whole = (start, stop) == (0, len(data))
        rows = data if whole else data.select(range(start, stop))
        return iter(rows.with_format(None))

    def measure(self, data: Any, start: int, stop: int) -> tuple[str, int]:
        table = data.data
        size = table.nbytes * (stop - start) // max(1, table.num_rows)
        return f"{data._fingerprint}:{start}:{stop}", int(size)

    def shipped(self, data: Any, start: int, stop: int) -> tuple[_Access, Any, int]:
        if data.cache_files:  # memory-mapped files: datasets pickles their paths, not their rows
            return self, data, 0
        return _LIST, list(self.rows(data, start, stop)), start


_LIST, _TABLE, _DATASET = _Access(), _TableAccess(), _DatasetAccess()


class ShardedRecords:
    """A ``datasets.IterableDataset``, or a contiguous run of its shards."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.spec = "<datasets.IterableDataset>"
        self.shard = (0, 1)  # (index, count): which run of shards this is

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        index, count = self.shard
        name = "dataset" if count == 1 else f"dataset shard {index}/{count}"
        # iter() in batches: iterated row by row inside a DataLoader worker, the dataset would
        # keep only that worker's share of its shards.
        rows = 0
        for batch in self.dataset.with_format(None).iter(batch_size=ROWS_PER_BATCH):
            columns = list(batch)
            for values in zip(*batch.values()):
                yield dict(zip(columns, values)), Where(f"{name}[{rows}]")
                rows += 1

    def split(self, pieces: int) -> list[ShardedRecords]:
        count = max(1, min(pieces, self.dataset.n_shards))
        if self.shard != (0, 1) or count == 1:
            return [self]
        runs = []
        for index in range(count):
            run = copy.copy(self)
            run.shard = (index, count)
            run.dataset = self.dataset.shard(num_shards=count, index=index, contiguous=True)
            runs.append(run)
        return runs

    def fingerprint(self) -> str:
        return unrepeatable(self.spec)


class OneShot:
    """Records from an iterator: read once, in one piece, in this process."""

    def __init__(self, records: Iterator[Any]):
        self.spec = "<iterator of records>"
        self._records: Iterator[Any] | None = records

    def records(self) -> Iterator[tuple[Any, Where]]:
        if self._records is None:
            raise GristmillError(
                f"{self.spec}: an iterator's records can be read once, and were read already: "
                "give a list (or a datasets Dataset) to read them again"
            )
        records, self._records = self._records, None
        for index, record in enumerate(records):
            yield record, Where(f"records[{index}]")

    def split(self, pieces: int) -> list[OneShot]:
        return [self]

    def fingerprint(self) -> str:
        return unrepeatable(self.spec)

    def __getstate__(self) -> dict[str, Any]:
        raise GristmillError(
            f"{self.spec}: records from an iterator cannot be sent to another process (a "
            "DataLoader worker started by spawn, a Ray task): give them as a list, a pyarrow "
            "Table or a datasets Dataset"
        )


def unrepeatable(spec: str) -> str:
    """The fingerprint of records that cannot be compared with an earlier run's: new each time."""
    log.warning(
        f"{spec}: these records have no fingerprint, so this dataset is never found up to date: "
        "preparing into the same directory again needs overwrite=True (a list, a pyarrow Table "
        "or a datasets Dataset is fingerprinted by its content)"
    )
    return f"unrepeatable-{uuid.uuid4().hex}"


def record_bytes(record: Any) -> bytes:
    """A record's content as bytes that differ whenever the record does."""
    try:
        text = _ENCODER.encode(record)
    except (TypeError, ValueError, RecursionError):  # keys of mixed types, a cycle, deep nesting
        text = repr(record)
    return text.encode("utf-8", "surrogatepass")


def _plain(value: Any) -> Any:
    """A value JSON cannot write, as one it can: arrays as lists, bytes as hex, others by repr
    (a repr that names an address changes every run, which only costs preparing again)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return repr(value)


# One encoder for every record: json.dumps with options makes a new one per call, which costs
# more than encoding a short record.
_ENCODER = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_plain
)
