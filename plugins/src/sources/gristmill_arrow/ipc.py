"""One Arrow IPC file opened for reading: the file format (random access, Feather v2) or the
stream format (what ``datasets`` writes), memory-mapped.

The file is mapped, not read: a batch without compression is used where it lies in the map, and
only a compressed one is decoded into memory. A mapping's pages stay resident, counted as this
process's memory, until they are unmapped; :meth:`Ipc.release` drops them after each slice of
rows, so that memory stays flat however large the file (a page touched again is read back from
the page cache).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from typing import Any

from gristmill.errors import DataError

FILE_MAGIC = b"ARROW1"  # the file format starts (and ends) with it; the stream format does not
FEATHER_V1 = b"FEA1"


def damaged(path: str, exc: Exception, what: str, read: str = "") -> DataError:
    """``what`` cannot be read: pyarrow's reason on one line, what was ``read``, what to do."""
    cause = " ".join(str(exc).split())  # pyarrow's messages span lines
    return DataError(
        f"{what} cannot be read ({type(exc).__name__}: {cause}); the file is damaged, truncated "
        f"or not Arrow IPC{read}; re-create or re-download it",
        where=path,
    )


class Ipc:
    """An Arrow IPC file, mapped, with the reader for its format and the columns read.

    ``columns`` projects the file (only those columns are decoded, in the order given, or with
    ``file_order`` in the file's); ``None`` reads all. Opening reads the schema (and the file
    format's footer), no batch.
    """

    def __init__(self, path: str, columns: Sequence[str] | None, *, file_order: bool = False):
        import pyarrow as pa

        self.path = path
        with open(path, "rb") as f:
            head = f.read(len(FILE_MAGIC))
            if not head:
                raise DataError("the file is empty: no Arrow IPC data in it", where=path)
            if head.startswith(FEATHER_V1):
                raise DataError(
                    "a Feather version 1 file, which pyarrow no longer reads in batches: write it "
                    "again as version 2 (pyarrow.feather.write_feather(read_table(PATH), NEW))",
                    where=path,
                )
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.random_access = head == FILE_MAGIC
        try:
            schema = self._open(None).schema
            self.columns = _projection(path, schema.names, columns)
            if file_order and self.columns is not None:
                self.columns = tuple(name for name in schema.names if name in self.columns)
            options = None
            if self.columns is not None:
                indices = sorted({schema.get_field_index(c) for c in self.columns})
                options = pa.ipc.IpcReadOptions(included_fields=indices)
            self.reader = self._open(options)
        except (OSError, pa.ArrowException) as exc:
            raise damaged(path, exc, "the file's schema") from None

    def _open(self, options: Any) -> Any:
        import pyarrow as pa

        source = pa.BufferReader(pa.py_buffer(self.map))
        if self.random_access:
            return pa.ipc.open_file(source, options=options)
        return pa.ipc.open_stream(source, options=options)

    @property
    def schema(self) -> Any:
        """The ``pyarrow.Schema`` of the columns read, in their order."""
        import pyarrow as pa

        schema = self.reader.schema
        if self.columns is None:
            return schema
        return pa.schema([schema.field(c) for c in self.columns])

    def batches(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, batch)`` for the record batches from ``start`` up to ``stop`` (``None``: to
        the end). The stream format has no index of its batches: the ones before ``start`` are
        read and passed over. A batch that cannot be read raises the pyarrow error."""
        if self.random_access:
            end = self.reader.num_record_batches if stop is None else stop
            for index in range(start, end):
                yield index, self._columns(self.reader.get_batch(index))
            return
        index = 0
        while stop is None or index < stop:
            try:
                batch = self.reader.read_next_batch()
            except StopIteration:
                return
            if index >= start:
                yield index, self._columns(batch)
            index += 1

    def _columns(self, batch: Any) -> Any:
        return batch if self.columns is None else batch.select(list(self.columns))

    def release(self) -> None:
        """Drop the mapped pages read so far from this process's memory (where the system can)."""
        if hasattr(self.map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED)


def _projection(
    path: str, names: Sequence[str], columns: Sequence[str] | None
) -> tuple[str, ...] | None:
    if columns is None:
        return None
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(
            f"no column {', '.join(map(repr, missing))} in this file; it has "
            f"{', '.join(map(repr, names))}",
            where=path,
        )
    return tuple(columns)
