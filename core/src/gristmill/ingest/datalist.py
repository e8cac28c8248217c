"""Data-list files: one source that names several, each read at a sampling ratio.

A data list is a YAML or JSON file holding a list of entries (or a mapping whose ``sources`` or
``datasets`` key holds it)::

    - path: web/          # a file, folder or glob, relative to the list; or a spec (hub:…)
      ratio: 0.5          # optional, default 1: see Sampled
      format: jsonl       # optional: the source that reads its files, whatever their suffix
    - qa.csv              # an entry may be its path alone

A ``.yaml`` or ``.yml`` file named as a source is a data list; ``list:FILE`` names one of any of
the three suffixes (a ``.json`` file named alone holds JSON records). :mod:`gristmill.ingest.sources`
opens the entries as if each had been named; this module reads the file and samples the records.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.errors import DataError, MissingDependencyError
from gristmill.ingest.records import record_bytes
from gristmill.ingest.splits import hash_share
from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import HasSchema, HasSize, PassedOver, Rejected, Source, Where

LIST_PREFIX = "list:"
YAML_SUFFIXES = (".yaml", ".yml")
KEYS = {
    "path": "a file, folder or glob (relative to the list) or a source spec",
    "ratio": "a positive number: 0.5 keeps half the records, 2 repeats each twice (default 1)",
    "format": "the source that reads the entry's files whatever their suffix, e.g. jsonl",
}
SAMPLING_KEY = b"gristmill data-list ratio"  # keys the hash, apart from the split's


@dataclass(frozen=True)
class Entry:
    """Entry ``number`` (from 1) of the data list ``listed``; ``path`` as written there."""

    path: str
    ratio: float
    format: str | None
    listed: str
    number: int

    @property
    def where(self) -> str:
        """What errors about the entry name."""
        return f"{self.listed}: entry {self.number} ({self.path})"

    @property
    def folder(self) -> str:
        """Where the entry's relative paths start."""
        return os.path.dirname(self.listed) or "."


def list_file(spec: str) -> str | None:
    """The data-list file ``spec`` names (``list:FILE``, or an existing ``.yaml``/``.yml``
    file), or None."""
    if spec.startswith(LIST_PREFIX):
        return spec.removeprefix(LIST_PREFIX)
    if spec.lower().endswith(YAML_SUFFIXES) and os.path.isfile(spec):
        return spec
    return None


def read_entries(path: str) -> list[Entry]:
    """The entries of the data list at ``path``, checked."""
    items = _load(path)
    if isinstance(items, Mapping):
        keys = [key for key in ("sources", "datasets") if key in items]
        if len(keys) != 1 or len(items) != 1:
            raise DataError(
                "a data list is a list of entries, or a mapping with one key, sources or "
                f"datasets, holding that list; this one has the keys {sorted(items)}",
                where=path,
            )
        items = items[keys[0]]
    if not isinstance(items, list) or not items:
        raise DataError(
            "a data list is a non-empty list of entries (each a path, or a mapping with path "
            f"and optionally ratio and format); this file holds {type(items).__name__}",
            where=path,
        )
    return [_entry(item, path, number) for number, item in enumerate(items, 1)]


def _load(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("data list not found", where=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the data list: {exc}", where=path) from None
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DataError(f"not valid JSON: {exc}", where=path) from None
    if suffix not in YAML_SUFFIXES:
        raise DataError("a data list is a .json, .yaml or .yml file", where=path)
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError(
            f"{path}: reading a YAML data list needs PyYAML: pip install 'gristmill[yaml]', or "
            "write the list as JSON and name it list:FILE.json"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML: {exc}", where=path) from None


def _entry(item: Any, listed: str, number: int) -> Entry:
    where = f"{listed}: entry {number}"
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, Mapping):
        raise DataError(f"expected a path or a mapping with path, got {item!r}", where=where)
    path, ratio, fmt = item.get("path"), item.get("ratio", 1), item.get("format")
    if not isinstance(path, str) or not path.strip():
        raise DataError("path must name a file, folder, glob or spec", where=where)
    where = f"{where} ({path})"
    for key in item:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            takes = "; ".join(f"{name} ({text})" for name, text in KEYS.items())
            raise DataError(f"no key {key!r}: {hint}an entry takes {takes}", where=where)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise DataError(
            f"ratio must be a positive number (0.5 keeps half the records, 2 repeats each "
            f"twice), got {ratio!r}; leave the entry out to read none of it",
            where=where,
        )
    if fmt is not None and (not isinstance(fmt, str) or not fmt):
        raise DataError(f"format must name a source, e.g. jsonl, got {fmt!r}", where=where)
    return Entry(path, float(ratio), fmt, listed, number)


# --- sampling ------------------------------------------------------------------------------------


class Sampled:
    """A source read at a ratio: each record ``int(ratio)`` times, plus once more when a hash
    of its content falls below the fraction left (``ratio`` 0.5: half the records, chosen by
    content; 2: each twice). A record left out is counted (``PassedOver``, reason ``ratio``);
    records its source rejects or passes over pass through once, whatever the ratio.

    The choice depends on a record's content alone, so it is the same for any cut of the
    source into parts, any worker count, and every run.
    """

    def __init__(self, source: Source, ratio: float, entry: Entry):
        self.source, self.ratio, self.entry = source, ratio, entry
        self.spec = source.spec  # a file's path: its size plans the tasks, as unsampled

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected | PassedOver]:
        whole, fraction = divmod(self.ratio, 1.0)
        for item in self.source.records():
            if isinstance(item, (Rejected, PassedOver)):
                yield item
                continue
            copies = int(whole) + (fraction > 0 and share(item[0]) < fraction)
            if not copies:
                yield PassedOver("ratio", item[1])
            for _ in range(copies):
                yield item

    def split(self, pieces: int) -> Sequence[Source]:
        return [sampled(part, self.ratio, self.entry) for part in self.source.split(pieces)]

    def fingerprint(self) -> str:
        return fingerprint([self.source.fingerprint(), self.ratio])

    def __reduce__(self) -> tuple[Any, ...]:
        return (sampled, (self.source, self.ratio, self.entry))


def sampled(source: Source, ratio: float, entry: Entry) -> Sampled:
    """``source`` read at ``ratio``, with the capabilities (schema, size) the source has."""
    return _sampled_type(type(source))(source, ratio, entry)


@functools.cache
def _sampled_type(kind: type) -> type[Sampled]:
    # One class per kind of source: the schema check compares the sources of one class.
    methods: dict[str, Any] = {}
    if issubclass(kind, HasSchema):
        methods["schema"] = lambda self: self.source.schema()
    if issubclass(kind, HasSize):
        methods["nbytes"] = lambda self: self.source.nbytes()
    return type(f"Sampled{kind.__name__}", (Sampled,), methods)


def share(record: Any) -> float:
    """Where a record's content hashes to in [0, 1)."""
    return hash_share(record_bytes(record), SAMPLING_KEY)
