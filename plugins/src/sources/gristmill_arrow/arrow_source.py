"""The Arrow source: rows of Arrow IPC files streamed a slice at a time, split by record batch.

A source reads one ``.arrow``/``.arrows``/``.feather``/``.ipc`` file, or the data files of a
folder that ``datasets`` saved, in order (:mod:`gristmill_arrow.saved`). Rows are numbered from
1 across the whole source: in a saved folder, row N is ``dataset[N - 1]``.

Memory stays bounded whatever the file size: files are memory-mapped and read one record batch at
a time (:mod:`gristmill_arrow.ipc`), and a batch becomes Python dicts one slice of rows at a time.
pyarrow is imported inside the functions that need it, never at module import: see
``tests/plugin/test_import_cheap.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Generator, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from gristmill.errors import DataError, MissingDependencyError
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES, Rejected, Where
from gristmill.plugin.files import content_hash, is_compressed
from gristmill.plugin.tables import balanced_bounds, batch_records, slice_rows, type_name
from gristmill_arrow.ipc import Ipc, damaged
from gristmill_arrow.saved import saved

HINT = "pip install 'gristmill[parquet]'"
log = logging.getLogger("gristmill")

Item = tuple[dict[str, Any], Where] | Rejected


class Run(NamedTuple):
    """Record batches ``start`` up to ``stop`` (``None``: the end) of one file, whose first row
    is row ``first`` of the source."""

    path: str
    start: int
    stop: int | None
    first: int


def _pyarrow(spec: str) -> None:
    """Import pyarrow, or raise an error that says which extra installs it."""
    try:
        import pyarrow.ipc  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.partition(".")[0] != "pyarrow":
            raise  # pyarrow is there but broken: show the real cause
        raise MissingDependencyError(f"{spec}: reading Arrow files needs pyarrow: {HINT}") from None


class ArrowSource:
    """An Arrow IPC file or a saved ``datasets`` folder, or a run of its record batches (a piece
    made by :meth:`split`).

    Options: ``max_record_bytes`` (rows larger than this are rejected as ``too-large``),
    ``columns`` (read only these columns; ``None`` reads all, or for a saved folder whose format
    names columns, those), ``split`` (the split of a ``DatasetDict`` folder; default ``train``).
    ``splits`` lists a ``DatasetDict``'s splits (empty otherwise). ``runs`` describes a piece; a
    piece reports the same row numbers as the whole source does.
    """

    def __init__(
        self,
        spec: str,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        columns: Sequence[str] | str | None = None,
        split: str | None = None,
        runs: Sequence[Run] | None = None,
        **context: Any,
    ):
        if is_compressed(spec):
            raise DataError(
                "Arrow files are read in place (memory-mapped): decompress the file, or write it "
                "with compression inside (pyarrow.ipc.IpcWriteOptions(compression='zstd'))",
                where=spec,
            )
        # A folder that is no saved dataset says so even without pyarrow.
        folder = saved(spec, split) if os.path.isdir(spec) else None
        _pyarrow(spec)  # a missing extra fails when the source is opened, before any output
        self.spec = spec
        self.max_record_bytes = int(max_record_bytes)
        if isinstance(columns, str):
            columns = [columns]
        if columns is not None and not columns:
            raise DataError(
                "columns=[] reads nothing: name columns, or pass None for all", where=spec
            )
        self.files = folder.files if folder else (spec,)
        self.split_name = folder.split if folder else None
        self.splits = folder.splits if folder else ()
        self.split_given = split is not None
        shown = folder.columns if folder else None
        self.columns = tuple(columns) if columns is not None else shown
        # A saved format's columns come in the file's order, as datasets gives them.
        self.file_order = columns is None and shown is not None
        self.runs = None if runs is None else tuple(Run(*r) for r in runs)
        if folder is not None and split is None and len(folder.splits) > 1:
            others = ", ".join(repr(s) for s in folder.splits if s != folder.split)
            log.info(
                f"{spec}: a DatasetDict; reading its split {folder.split!r} (it also has "
                f"{others}: name one's folder, or give the source option split=NAME)"
            )

    def __repr__(self) -> str:
        return f"ArrowSource({self.spec!r}, columns={self.columns}, runs={self.runs})"

    # --- reading ---------------------------------------------------------------------------------

    def records(self) -> Iterator[Item]:
        """Every row as a dict, batch by batch. A file that cannot be read on raises a
        :class:`DataError` naming it, after the rows read before the damage."""
        if self.runs is not None:
            for run in self.runs:
                yield from self._run_records(run)
            return
        row = 1
        for path in self.files:
            row = yield from self._run_records(Run(path, 0, None, row))

    def _run_records(self, run: Run) -> Generator[Item, None, int]:
        """The rows of one run; returns the number of the row after its last."""
        import pyarrow as pa  # after __init__: a missing pyarrow gets the install hint there

        ipc = self._ipc(run.path)
        row = run.first
        batches = ipc.batches(run.start, run.stop)
        while True:
            # Only the read is guarded: errors from our own code must not pass as damage.
            try:
                found = next(batches, None)
            except (OSError, pa.ArrowException) as exc:
                raise self._damaged(run, row, exc) from None
            if found is None:
                return row
            index, batch = found
            step = slice_rows(batch.nbytes, batch.num_rows)
            for start in range(0, batch.num_rows, step):
                part = batch.slice(start, step)
                try:
                    # Damaged bytes can decode to text that is not UTF-8, or to offsets past
                    # the data: caught here, before any value becomes a Python object.
                    part.validate(full=True)
                except (OSError, pa.ArrowException) as exc:
                    raise self._damaged(run, row, exc, index) from None
                yield from batch_records(part, self.spec, row, self.max_record_bytes)
                row += part.num_rows
                ipc.release()

    def _damaged(self, run: Run, row: int, exc: Exception, index: int | None = None) -> DataError:
        what = "a record batch" if index is None else f"record batch {index}"
        read = f"rows up to {row - 1:,} were read" if row > run.first else "no row of it was read"
        return damaged(run.path, exc, what, f"; {read}, the rest of the file was not")

    # --- describing and splitting ----------------------------------------------------------------

    def schema(self) -> dict[str, str]:
        """Column → type of the columns read (of the first file: a saved folder's files share
        theirs), compared by the values they read to, as the Parquet source does."""
        schema = self._ipc(self.files[0]).schema
        return {field.name: type_name(field.type) for field in schema}

    def named_splits(self) -> dict[str, ArrowSource]:
        """A ``DatasetDict`` folder's splits, each as a source (``HasSplits``), in its order;
        only the one the ``split`` option names, when it names one; none for a ``Dataset``
        folder or a file."""
        if self.split_given:
            return {self.split_name: self} if self.split_name else {}
        return {
            name: self
            if name == self.split_name
            else ArrowSource(
                self.spec,
                max_record_bytes=self.max_record_bytes,
                columns=None if self.file_order else self.columns,
                split=name,
            )
            for name in self.splits
        }

    def split(self, pieces: int) -> list[ArrowSource]:
        """Runs of contiguous record batches of about equal size, in order; a piece may span the
        end of one file and the start of the next."""
        try:
            batches = self._batches()
        except DataError:
            return [self]  # records() reports the damage, under the error policy
        n = min(pieces, len(batches))
        if n <= 1:
            return [self]
        # Weigh by bytes so that pieces cost about the same; an empty batch still weighs 1.
        bounds = balanced_bounds([max(1, size) for _, _, _, size in batches], n)
        firsts = np.cumsum([self._first()] + [rows for _, _, rows, _ in batches])
        return [self._piece(batches[a:b], int(firsts[a])) for a, b in itertools.pairwise(bounds)]

    def _piece(self, batches: Sequence[tuple[str, int, int, int]], first: int) -> ArrowSource:
        """A source over ``batches`` (in order), whose first row is row ``first``."""
        runs = []
        for path, group in itertools.groupby(batches, key=lambda b: b[0]):
            found = list(group)
            runs.append(Run(path, found[0][1], found[-1][1] + 1, first))
            first += sum(rows for _, _, rows, _ in found)
        return ArrowSource(
            self.spec,
            max_record_bytes=self.max_record_bytes,
            columns=None if self.file_order else self.columns,  # the folder's format again
            split=self.split_name,
            runs=runs,
        )

    def _batches(self) -> list[tuple[str, int, int, int]]:
        """``(file, index, rows, bytes)`` of every record batch this source reads."""
        import pyarrow as pa

        runs = self.runs if self.runs is not None else [Run(p, 0, None, 0) for p in self.files]
        found = []
        for run in runs:
            ipc = self._ipc(run.path)
            try:
                for index, batch in ipc.batches(run.start, run.stop):
                    found.append((run.path, index, batch.num_rows, batch.nbytes))
                    ipc.release()
            except (OSError, pa.ArrowException) as exc:
                raise damaged(run.path, exc, "a record batch") from None
        return found

    def _first(self) -> int:
        return 1 if self.runs is None else self.runs[0].first

    def nbytes(self) -> int:
        """Bytes of the files it reads from (a saved folder's data files)."""
        paths = self.files if self.runs is None else {run.path for run in self.runs}
        return sum(os.path.getsize(p) for p in paths)

    def fingerprint(self) -> str:
        """The content hash of the file, or of a saved folder's data files in order; plus the
        projection: other columns are other records."""
        if len(self.files) == 1 and self.files[0] == self.spec:
            digest = content_hash(self.spec)
        else:
            hashes = (f"{os.path.basename(p)}={content_hash(p)}" for p in self.files)
            digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
        return digest if self.columns is None else f"{digest}+columns={','.join(self.columns)}"

    def _ipc(self, path: str) -> Ipc:
        return Ipc(path, self.columns, file_order=self.file_order)
