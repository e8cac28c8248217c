"""The Parquet source: rows streamed a batch at a time, split by row group.

Memory stays bounded whatever the file size: the reader decodes one row group at a time, column
chunks are read through a small buffer (``buffer_size``, no pre-buffering of a whole row group),
and only one record batch is turned into Python dicts at once. The batch size follows the row
group's own uncompressed size, so files with very wide rows get small batches.

pyarrow is imported inside the functions that need it, never at module import: see
``tests/plugin/test_import_cheap.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gristmill.errors import DataError, MissingDependencyError
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES, Rejected, Where
from gristmill.plugin.files import content_hash, is_compressed
from gristmill.plugin.tables import balanced_bounds, batch_records, slice_rows, type_name

if TYPE_CHECKING:
    import pyarrow.parquet as pq

READ_BUFFER = 1 << 20  # bytes read at a time from a column chunk

HINT = "pip install 'gristmill[parquet]'"


def _pyarrow(spec: str) -> Any:
    """``pyarrow.parquet``, or an error that says which extra installs it."""
    try:
        import pyarrow.parquet
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.partition(".")[0] != "pyarrow":
            raise  # pyarrow is there but broken: show the real cause
        raise MissingDependencyError(
            f"{spec}: reading Parquet files needs pyarrow: {HINT}"
        ) from None
    return pyarrow.parquet


class ParquetSource:
    """One Parquet file, or a run of its row groups (a piece made by :meth:`split`).

    Options: ``max_record_bytes`` (rows larger than this are rejected as ``too-large``),
    ``columns`` (read only these columns; ``None`` reads all), ``batch_size`` (rows per record
    batch; by default sized from the row group's bytes). ``row_groups`` and ``first_row`` describe
    a piece; a piece reports the same row numbers as the whole file does.
    """

    def __init__(
        self,
        spec: str,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        columns: Sequence[str] | str | None = None,
        batch_size: int | None = None,
        row_groups: Sequence[int] | None = None,
        first_row: int = 1,
        **options: Any,
    ):
        if is_compressed(spec):
            raise DataError(
                "Parquet compresses its pages itself and is read in place: decompress the file "
                "(or write it with compression inside, e.g. zstd)",
                where=spec,
            )
        _pyarrow(spec)  # a missing extra fails when the source is opened, before any output
        self.spec = spec
        self.max_record_bytes = int(max_record_bytes)
        if isinstance(columns, str):
            columns = [columns]
        self.columns = None if columns is None else tuple(columns)
        if self.columns is not None and not self.columns:
            raise DataError(
                "columns=[] reads nothing: name columns, or pass None for all", where=spec
            )
        self.batch_size = batch_size
        self.row_groups = None if row_groups is None else tuple(row_groups)
        self.first_row = first_row

    def __repr__(self) -> str:
        return (
            f"ParquetSource({self.spec!r}, columns={self.columns}, row_groups={self.row_groups}, "
            f"first_row={self.first_row})"
        )

    # --- reading ---------------------------------------------------------------------------------

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        """Every row as a dict, row group by row group.

        A row group that cannot be read is one :class:`Rejected` (``damaged-row-group``) that
        stands for its rows not yet yielded, counted from the footer; the next group is read as
        usual. Only a footer that cannot be read ends the file (a :class:`DataError`).
        """
        pf = self._open()
        with pf:
            columns = self._projection(pf)
            row = self.first_row
            for group in self._groups(pf):
                meta = pf.metadata.row_group(group)
                yield from self._group_records(pf, group, meta, row, columns)
                row += meta.num_rows

    def _group_records(
        self,
        pf: pq.ParquetFile,
        group: int,
        meta: pq.RowGroupMetaData,
        first: int,
        columns: list[str] | None,
    ) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        import pyarrow as pa  # after _open: a missing pyarrow gets the install hint there

        batches = pf.iter_batches(
            batch_size=self._batch_rows(meta), row_groups=[group], columns=columns
        )
        row = first
        while True:
            # Only the read is guarded: errors from our own code must not pass as damage.
            try:
                batch = next(batches, None)
                if batch is not None:
                    # Damaged bytes can decode to text that is not UTF-8: caught here, per group.
                    batch.validate(full=True)
            except (OSError, pa.ArrowException) as exc:
                yield self._damaged(group, first, meta.num_rows, row, exc)
                return
            if batch is None:
                return
            yield from batch_records(batch, self.spec, row, self.max_record_bytes)
            row += batch.num_rows

    def _damaged(self, group: int, first: int, rows: int, row: int, exc: Exception) -> Rejected:
        """The rest of a row group that cannot be read, from row ``row`` on."""
        lost = first + rows - row
        read = f"; rows {first:,} to {row - 1:,} were read" if row > first else ""
        cause = " ".join(str(exc).split())  # pyarrow's messages span lines
        return Rejected(
            "damaged-row-group",
            f"row group {group} (rows {first:,} to {first + rows - 1:,}) cannot be read "
            f"({type(exc).__name__}: {cause}); the file is damaged: {lost:,} rows "
            f"of it were not read{read}, the other row groups are read as usual; "
            "re-create or re-download the file",
            Where(self.spec),
            rows=lost,
        )

    # --- describing and splitting ----------------------------------------------------------------

    def schema(self) -> dict[str, str]:
        """Column → type of the columns read, for the core's check that files agree.

        Only the projected columns count: a difference in a column that is not read is no
        drift. Types are compared by their values: ``large_string`` (polars) and ``string``
        (pandas), or a dictionary-encoded string column, all read as ``str``.
        """
        with self._open() as pf:
            columns = self._projection(pf)
            schema = pf.schema_arrow
            names = columns if columns is not None else schema.names
            return {name: type_name(schema.field(name).type) for name in names}

    def split(self, pieces: int) -> list[ParquetSource]:
        """Runs of contiguous row groups of about equal uncompressed size, in file order."""
        try:
            pf = self._open()
        except DataError:
            return [self]  # records() reports the damage, under the error policy
        with pf:
            groups = self._groups(pf)
            metas = [pf.metadata.row_group(g) for g in groups]
        n = min(pieces, len(groups))
        if n <= 1:
            return [self]
        # Weigh by bytes so that pieces cost about the same; an empty group still weighs 1.
        bounds = balanced_bounds([max(1, m.total_byte_size) for m in metas], n)
        firsts = np.cumsum([self.first_row] + [m.num_rows for m in metas])
        return [
            ParquetSource(
                self.spec,
                max_record_bytes=self.max_record_bytes,
                columns=self.columns,
                batch_size=self.batch_size,
                row_groups=groups[a:b],
                first_row=int(firsts[a]),
            )
            for a, b in itertools.pairwise(bounds)
        ]

    def fingerprint(self) -> str:
        """The file's content hash, plus the projection: other columns are other records."""
        digest = content_hash(self.spec)
        return digest if self.columns is None else f"{digest}+columns={','.join(self.columns)}"

    # --- helpers ---------------------------------------------------------------------------------

    def _open(self) -> pq.ParquetFile:
        parquet = _pyarrow(self.spec)
        import pyarrow as pa

        try:
            # buffer_size streams each column chunk; pre_buffer would load a row group at once.
            # Pages written with checksums are verified: a flipped byte in a value is otherwise
            # read as a different value.
            return parquet.ParquetFile(
                self.spec,
                buffer_size=READ_BUFFER,
                pre_buffer=False,
                page_checksum_verification=True,
            )
        except (OSError, pa.ArrowException) as exc:
            raise DataError(
                f"not a readable Parquet file ({type(exc).__name__}: {exc}); the file is damaged "
                "or is not Parquet",
                where=self.spec,
            ) from None

    def _projection(self, pf: pq.ParquetFile) -> list[str] | None:
        if self.columns is None:
            return None
        names = pf.schema_arrow.names
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise DataError(
                f"no column {', '.join(map(repr, missing))} in this file; it has "
                f"{', '.join(map(repr, names))}",
                where=self.spec,
            )
        return list(self.columns)

    def _groups(self, pf: pq.ParquetFile) -> tuple[int, ...]:
        total = pf.metadata.num_row_groups
        if self.row_groups is None:
            return tuple(range(total))
        if self.row_groups and max(self.row_groups) >= total:
            raise DataError(
                f"has {total} row groups, fewer than when it was split: the file changed while "
                "it was being read",
                where=self.spec,
            )
        return self.row_groups

    def _batch_rows(self, meta: pq.RowGroupMetaData) -> int:
        if self.batch_size:
            return int(self.batch_size)
        return slice_rows(meta.total_byte_size, meta.num_rows)
