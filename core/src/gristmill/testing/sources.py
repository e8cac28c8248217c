"""Sources: the records given, in order, every time; split pieces that together are the whole;
pieces that pickle; a fingerprint that stays while the data does and changes when it changes."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from typing import Any

import pytest

from gristmill.plugin.components import (
    DEFAULT_MAX_RECORD_BYTES,
    PassedOver,
    Rejected,
    SourceType,
    Where,
)
from gristmill.testing.data import CHANGED, RECORDS, default_writer
from gristmill.testing.kit import Check, Context, given


def checks(record: SourceType) -> dict[str, Check]:
    return {
        "records": check_records,
        "split": check_split,
        "pickle": check_pickle,
        "fingerprint": check_fingerprint,
    }


def _writer(record: SourceType, context: Context) -> Any:
    """The user's input for this source, else the kit's writer for its file suffix."""
    chosen = context.inputs.sources.get(record.name) or default_writer(record.suffixes)
    if chosen is None:
        claims = ", ".join(record.prefixes + record.suffixes)
        pytest.skip(
            f"source {record.name!r} claims {claims}, which the kit cannot write: pass "
            f"sources={{{record.name!r}: write}} to conformance()"
        )
    return given(chosen, f"source {record.name!r}")


def _open(record: SourceType, context: Context, records: list[dict] = RECORDS) -> tuple[Any, Any]:
    """The source opened on ``records`` written in its format (``None`` for a fixed spec)."""
    writer = _writer(record, context)
    if isinstance(writer, str):
        spec, expected = writer, None
    else:
        spec, expected = writer(context.folder(), records), records
    source = record.factory(spec, max_record_bytes=DEFAULT_MAX_RECORD_BYTES, column_names=None)
    return source, expected


def _items(source: Any, passed: Counter[str] | None = None) -> list[tuple[dict, Where]]:
    """The records of ``source``; the units it passed over are added to ``passed``."""
    items = []
    for item in source.records():
        if isinstance(item, PassedOver):
            if passed is not None:
                passed[item.reason] += item.rows
        else:
            items.append(item)
    rejected = [item for item in items if isinstance(item, Rejected)]
    assert not rejected, f"well-formed input rejected: {rejected[:3]}"
    for item in items:
        assert isinstance(item, tuple) and len(item) == 2, f"records() yielded {item!r}"
        assert isinstance(item[0], dict), f"a record is a dict, got {type(item[0]).__name__}"
        assert isinstance(item[1], Where), f"a record's place is a Where, got {item[1]!r}"
    return items


def check_records(record: SourceType, context: Context) -> None:
    source, expected = _open(record, context)
    assert isinstance(source.spec, str), f"spec is {source.spec!r}"
    items = _items(source)
    if expected is not None:
        got = [r for r, _ in items]
        assert got == expected, f"read {len(got)} records, not the {len(expected)} written"
    assert _items(source) == items, "a second read gave other records"


def check_split(record: SourceType, context: Context) -> None:
    source, _ = _open(record, context)
    # A piece of a file reports the file's own lines or rows; a piece of anything else (a Hub
    # dataset's shard) may say where it is in its own terms.
    placed = os.path.exists(source.spec)
    passed: Counter[str] = Counter()
    whole = [item if placed else item[0] for item in _items(source, passed)]
    for pieces in (1, 2, 3, 7):
        parts = source.split(pieces)
        assert 1 <= len(parts) <= pieces, f"split({pieces}) gave {len(parts)} pieces"
        counted: Counter[str] = Counter()
        joined = [item if placed else item[0] for part in parts for item in _items(part, counted)]
        assert joined == whole, f"the {len(parts)} pieces of split({pieces}) are not the whole"
        assert counted == passed, (
            f"the {len(parts)} pieces of split({pieces}) pass over {dict(counted)}, "
            f"the whole {dict(passed)}"
        )


def check_pickle(record: SourceType, context: Context) -> None:
    source, _ = _open(record, context)
    parts = source.split(3)
    for piece in (source, *parts):
        copy = pickle.loads(pickle.dumps(piece))
        assert _items(copy) == _items(piece), "a pickled copy reads other records"


def check_fingerprint(record: SourceType, context: Context) -> None:
    source, expected = _open(record, context)
    fingerprint = source.fingerprint()
    assert isinstance(fingerprint, str) and fingerprint, f"fingerprint() is {fingerprint!r}"
    assert source.fingerprint() == fingerprint, "the fingerprint changed with the data unchanged"
    if expected is not None:
        other, _ = _open(record, context, CHANGED)
        assert other.fingerprint() != fingerprint, "the fingerprint ignores a changed record"
