"""Arrow record batches as records: what the sources that read Arrow data share (Parquet files,
Arrow IPC files and ``datasets`` folders).

A batch becomes Python dicts a slice at a time (:func:`slice_rows` rows, sized from the bytes a
row holds), so that memory follows the slice and not the file; rows over ``max_record_bytes`` are
rejected before any of their values become Python objects.

pyarrow is imported inside the functions that need it, never at module import: the kit must stay
importable without the extra (``tests/plugin/test_import_cheap.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gristmill.plugin.components import Rejected, Where

BATCH_BYTES = 8 << 20  # aim for slices of about this many uncompressed bytes …
MAX_BATCH_ROWS = 8192  # … but never more rows than this (each becomes a Python dict)


def slice_rows(nbytes: float, rows: int) -> int:
    """Rows to turn into dicts at once, for data of ``nbytes`` over ``rows`` rows."""
    per_row = nbytes / max(1, rows)
    return int(min(MAX_BATCH_ROWS, max(1, BATCH_BYTES // max(1.0, per_row))))


def batch_records(
    batch: Any, origin: str, first: int, max_record_bytes: int
) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
    """The rows of ``batch`` (a ``pyarrow.RecordBatch``) as dicts, placed as ``origin: row N``
    from row ``first`` on; a row over ``max_record_bytes`` as a :class:`Rejected`
    (``too-large``, naming its largest column), never decoded."""
    # A batch that fits under the limit cannot hold a row over it: skip the per-row sizes.
    if batch.nbytes <= max_record_bytes:
        yield from _plain(batch, origin, first)
        return
    per_column = np.stack([value_sizes(column) for column in batch.columns])
    sizes = per_column.sum(axis=0)
    start = 0
    for bad in np.flatnonzero(sizes > max_record_bytes):
        yield from _plain(batch.slice(start, bad - start), origin, first + start)
        column = batch.schema.names[int(per_column[:, bad].argmax())]
        yield Rejected(
            "too-large",
            f"the row holds about {int(sizes[bad]):,} bytes (most of them in column "
            f"{column!r}), more than {max_record_bytes:,}; raise --max-record-bytes if "
            "such records are expected",
            Where(origin, first + int(bad), unit="row"),
            field=column,
        )
        start = int(bad) + 1
    yield from _plain(batch.slice(start), origin, first + start)


def _plain(batch: Any, origin: str, first: int) -> Iterator[tuple[dict[str, Any], Where]]:
    for i, record in enumerate(batch.to_pylist()):
        yield record, Where(origin, first + i, unit="row")


def balanced_bounds(weights: Sequence[int], n: int) -> list[int]:
    """``n + 1`` increasing cut points over ``weights`` (``n <= len``): pieces of near-equal weight.

    Each cut goes to the boundary nearest its share of the total, then moves just enough that
    every piece keeps at least one item: asking for ``n`` pieces gives ``n`` whenever it can.
    """
    cumulative = np.concatenate([[0], np.cumsum(weights)])
    count = len(weights)
    bounds = [0]
    for k in range(1, n):
        target = cumulative[-1] * k / n
        nearest = int(np.abs(cumulative - target).argmin())
        bounds.append(min(max(nearest, bounds[-1] + 1), count - (n - k)))
    return [*bounds, count]


def value_sizes(array: Any) -> np.ndarray:
    """Approximate bytes of each value of ``array`` (a ``pyarrow.Array``; int64), computed on
    whole buffers.

    Strings and binaries count their lengths, nested values the sum of their children, fixed
    width values their width; anything else the array's average.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, n = array.type, len(array)
    if n == 0:
        return np.zeros(0, np.int64)
    if pa.types.is_dictionary(kind):
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False)
        sizes = value_sizes(array.dictionary)[indices]
        return np.where(array.is_null().to_numpy(zero_copy_only=False), 0, sizes)
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        lengths = pc.binary_length(array).fill_null(0)
        return np.asarray(lengths.to_numpy(zero_copy_only=False), np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        child = array.values.slice(offsets[0], offsets[-1] - offsets[0])
        total = np.concatenate([[0], np.cumsum(value_sizes(child))])
        offsets -= offsets[0]
        return np.asarray(total[offsets[1:]] - total[offsets[:-1]], np.int64)
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
        child = array.values.slice(array.offset * width, n * width)
        return np.asarray(value_sizes(child).reshape(n, width).sum(axis=1), np.int64)
    if pa.types.is_struct(kind):
        sizes = np.zeros(n, np.int64)
        for child in array.flatten():
            sizes += value_sizes(child)
        return sizes
    try:
        bits = kind.bit_width
    except ValueError:  # not fixed width: fall back to the average
        return np.full(n, array.nbytes // n, np.int64)
    return np.full(n, (bits + 7) // 8, np.int64)


def type_name(kind: Any) -> str:
    """A ``pyarrow.DataType`` as text, with encodings that read to the same Python values made
    equal: ``large_string`` (polars) and ``string`` (pandas), or a dictionary-encoded string
    column, all read as ``str``."""
    return str(_plain_type(kind))


def _plain_type(kind: Any) -> Any:
    import pyarrow as pa

    types = pa.types
    if types.is_dictionary(kind):
        return _plain_type(kind.value_type)
    if types.is_large_string(kind) or getattr(types, "is_string_view", bool)(kind):
        return pa.string()
    if types.is_large_binary(kind) or getattr(types, "is_binary_view", bool)(kind):
        return pa.binary()
    if types.is_map(kind):
        return pa.map_(_plain_type(kind.key_type), _plain_type(kind.item_type))
    if types.is_list(kind) or types.is_large_list(kind):
        return pa.list_(_plain_type(kind.value_type))
    if types.is_struct(kind):
        return pa.struct([f.with_type(_plain_type(f.type)) for f in kind])
    return kind
