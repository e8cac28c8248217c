"""Choosing a field mapper for a source and applying it with precise error locations."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from gristmill.components import FieldMap, FieldMapperType, Source, Where
from gristmill.errors import DataError, FieldError
from gristmill.examples import Example
from gristmill.plugins import PluginManager


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
    keys: Collection[str], fmt: str, fields: Mapping[str, str], manager: PluginManager
) -> str:
    """The field mapper name for records with ``keys``: ``fmt`` itself unless it is ``auto``."""
    if fmt != "auto":
        return manager.field_mapper(fmt).name
    # Explicit --fields name the canonical fields the record will provide.
    visible = set(keys) | set(fields)
    for mapper in manager.field_mappers():
        if mapper.detect(visible):
            return mapper.name
    formats = ", ".join(m.name for m in manager.field_mappers())
    raise DataError(
        f"cannot tell the format of records with keys {sorted(keys)}: pass --format ({formats}) "
        "and, if the columns have other names, --fields e.g. text=body"
    )


def check_fields(mapper: FieldMapperType, fields: Mapping[str, str]) -> None:
    """Refuse ``--fields`` names that the mapper does not read."""
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
    report: Callable[[str], None],
) -> Iterator[tuple[Example, Where]]:
    """Every record of ``source`` as an :class:`Example` with its location; bad ones raise."""
    records = source.records()
    mapper: FieldMap | None = None
    for record, where in records:
        if mapper is None:
            if not isinstance(record, Mapping):
                raise DataError(
                    f"expected an object, got {type(record).__name__}", where=str(where)
                )
            try:
                name = choose_mapper(record.keys(), fmt, fields, manager)
            except DataError as exc:
                raise DataError(exc.reason, where=str(where)) from None
            how = "chosen from its keys" if fmt == "auto" else "as asked"
            report(f"{source.spec}: format {name} ({how})")
            mapper_type = manager.field_mapper(name)
            check_fields(mapper_type, fields)
            mapper = mapper_type.factory(fields)
        yield _apply(mapper, record, where), where


def _apply(mapper: FieldMap, record: Any, where: Where) -> Example:
    if not isinstance(record, Mapping):
        raise DataError(f"expected an object, got {type(record).__name__}", where=str(where))
    try:
        return mapper(record)
    except FieldError as exc:
        raise DataError(str(exc), where=str(where), field=exc.field) from None
