"""Choosing a field mapper for a source and applying it with precise error locations."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gristmill.errors import DataError, FieldError
from gristmill.ingest.policy import ErrorPolicy
from gristmill.plugin.components import (
    FieldMap,
    FieldMapperType,
    PassedOver,
    Rejected,
    Source,
    Where,
)
from gristmill.plugin.examples import Example
from gristmill.plugin.manager import PluginManager

TURN_INDEX = re.compile(r"\[\d+\]")


def parse_fields(text: str | None) -> dict[str, str]:
    """``"prompt=question,completion=answer"`` → ``{"prompt": "question", "completion": "answer"}``."""
    fields: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise DataError(f"--fields expects NAME=COLUMN pairs separated by commas, got {item!r}")
        fields[name.strip()] = column.strip()
    return fields


def choose_mapper(
    record: Mapping[str, Any], fmt: str, fields: Mapping[str, str], manager: PluginManager
) -> str:
    """The field mapper name for records like ``record``: ``fmt`` itself unless it is ``auto``."""
    if fmt != "auto":
        return manager.get(FieldMapperType, fmt).name
    keys = list(record)
    # Keys holding null say little about the format (a Parquet file written by `convert` has
    # every canonical column, most of them null): decide on the others first. Explicit --fields
    # name canonical fields the record will provide.
    for candidates in ({k for k, v in record.items() if v is not None}, set(keys)):
        visible = candidates | set(fields)
        for mapper in manager.field_mappers():
            if mapper.detect(visible):
                return mapper.name
    formats = ", ".join(m.name for m in manager.field_mappers())
    raise DataError(
        f"cannot tell the format of records with keys {sorted(keys)}: pass --format ({formats}) "
        "and, if the columns have other names, --fields e.g. text=body"
    )


def check_fields(mapper: FieldMapperType, fields: Mapping[str, str]) -> None:
    """Refuse ``--fields`` names that the mapper does not read, and names without a column."""
    blank = sorted(
        name for name, column in fields.items() if not isinstance(column, str) or not column
    )
    if blank:  # parse_fields refuses them on the command line; the Python API comes here
        raise DataError(f"--fields {blank[0]}= names no column (write --fields {blank[0]}=COLUMN)")
    unknown = sorted(set(fields) - set(mapper.fields))
    if unknown:
        raise DataError(
            f"--fields names {', '.join(unknown)}, but the {mapper.name} format reads only "
            f"{', '.join(mapper.fields)} (write --fields NAME=COLUMN, NAME first)"
        )


def mapped_examples(
    source: Source,
    fmt: str,
    fields: Mapping[str, str],
    manager: PluginManager,
    policy: ErrorPolicy,
    report: Callable[[str], None],
    metadata_columns: Sequence[str] = (),
) -> Iterator[tuple[Example, Where]]:
    """Every usable record of ``source`` as an :class:`Example` with its location, with its
    metadata: its ``metadata`` object's and its ``metadata_columns``' values.

    Bad records go to ``policy`` (which raises under ``fail``). Choosing the format is not a
    per-record problem: when the first record fits no format, that is raised whatever the policy.
    """
    mapper: FieldMap | None = None
    name = ""
    for record, where in _objects(source, policy):
        if mapper is None:
            name = _mapper_for(record, where, source.spec, fmt, fields, manager, report)
            mapper = manager.get(FieldMapperType, name).factory(fields)
        try:
            example = _with_metadata(mapper(record), record, metadata_columns)
        except FieldError as exc:
            # Count "messages[3].content" and "messages[7].content" as one reason.
            field = TURN_INDEX.sub("[]", exc.field) if exc.field else None
            reason = f"{exc.reason}:{field}" if field else exc.reason
            message = str(exc) + _other_format(record, exc, name, fmt, fields, manager)
            policy.reject(Rejected(reason, message, where, _raw(record), exc.field))
            continue
        yield example, where


def _other_format(
    record: Mapping[str, Any],
    exc: FieldError,
    name: str,
    fmt: str,
    fields: Mapping[str, str],
    manager: PluginManager,
) -> str:
    """When a field is missing from a record of another format than its source's (text among
    token ids…), a hint saying so: the format is chosen once per source, from its first record."""
    if exc.reason != "missing-field" or fmt != "auto" or fields:
        return ""
    try:
        other = choose_mapper(record, "auto", fields, manager)
    except DataError:  # fits no format: the message says what is missing already
        return ""
    if other == name:
        return ""
    return (
        f" (this record is in the {other} format, but its source's first record chose "
        f"{name}: give records of each format their own source)"
    )


def _objects(source: Source, policy: ErrorPolicy) -> Iterator[tuple[Mapping[str, Any], Where]]:
    """The records of ``source`` that are objects; the others, and a source that cannot go on,
    go to ``policy``."""
    items = iter(source.records())
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except DataError as exc:  # the source cannot go on (truncated archive…)
            policy.source_failed(exc)
            return
        if isinstance(item, Rejected):
            policy.reject(item)
            continue
        if isinstance(item, PassedOver):
            policy.pass_over(item)
            continue
        record, where = item
        if isinstance(record, Mapping):
            yield record, where
            continue
        message = f"expected an object with named fields, got {type(record).__name__}"
        policy.reject(Rejected("not-an-object", message, where, _raw(record)))


def _mapper_for(
    record: Mapping[str, Any],
    where: Where,
    spec: str,
    fmt: str,
    fields: Mapping[str, str],
    manager: PluginManager,
    report: Callable[[str], None],
) -> str:
    """The name of the field mapper for a source, chosen from its first object ``record``."""
    try:
        name = choose_mapper(record, fmt, fields, manager)
    except DataError as exc:
        raise DataError(exc.reason, where=str(where)) from None
    how = "chosen from its keys" if fmt == "auto" else "as asked"
    report(f"{spec}: format {name} ({how})")
    check_fields(manager.get(FieldMapperType, name), fields)
    return name


def _with_metadata(example: Example, record: Mapping[str, Any], columns: Sequence[str]) -> Example:
    """``example`` with the record's metadata, unless its mapper set some: the values of its
    ``metadata`` object, nested objects flattened to ``outer.inner`` keys (a value that is not
    an object is kept under the key ``metadata``), and of its ``columns`` (null where missing).
    A key given twice is a bad record."""
    if example.metadata is not None:
        return example
    meta = record.get("metadata")
    pairs: dict[str, Any] = {}
    if isinstance(meta, Mapping):
        pending = [("", meta)]
        while pending:  # a loop, not recursion: metadata may nest deeper than the stack
            prefix, mapping = pending.pop()
            for name, value in mapping.items():
                key = _writable(prefix + str(name))
                if isinstance(value, Mapping):
                    pending.append((key + ".", value))
                else:
                    _put(pairs, key, value, "the record's metadata object")
    elif meta is not None:
        _put(pairs, "metadata", meta, "the record's metadata")
    for column in columns:
        _put(pairs, column, record.get(column), "--metadata-columns")
    if not pairs and not isinstance(meta, Mapping):
        return example
    return replace(example, metadata=tuple(sorted(pairs.items())))


def _put(pairs: dict[str, Any], key: str, value: Any, origin: str) -> None:
    """``pairs[key]``: ``value`` as a metadata scalar (None for null and NaN; numpy scalars as
    Python's; a list as its JSON text, anything else as its text)."""
    if key in pairs:
        raise FieldError(
            key,
            f"metadata key {key!r} is given twice (by {origin} and before it; nested objects "
            "are flattened to outer.inner keys): rename one",
            "metadata-key-clash",
        )
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float) and value != value:
        value = None
    elif isinstance(value, (list, tuple)):
        try:
            value = json.dumps(value, ensure_ascii=False, default=str)
        except (RecursionError, ValueError):
            raise FieldError(
                key, "metadata value nested too deeply to store", "bad-metadata"
            ) from None
    elif value is not None and not isinstance(value, (str, int, float)):
        value = str(value)
    pairs[key] = _writable(value) if isinstance(value, str) else value


def _raw(record: Any) -> str | None:
    """The record as JSON for the reject file; None when it is nested too deeply to write."""
    try:
        return _writable(json.dumps(record, ensure_ascii=False, default=str))
    except RecursionError:
        return None


def _writable(text: str) -> str:
    """``text`` with lone surrogates (from JSON ``\\ud800`` escapes) written as such escapes.

    Python strings hold them, UTF-8 files cannot: the reject file and the manifest would fail.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
