"""Turning source specs (prefixes, paths, globs, directories) into opened sources."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gristmill.components import Source, SourceType
from gristmill.errors import DataError
from gristmill.files import without_compression
from gristmill.plugins import PluginManager


def open_sources(
    specs: Sequence[str | os.PathLike[str]], manager: PluginManager, **options: Any
) -> list[Source]:
    """Open every source, in the order given; paths expand to their files in sorted order.

    ``options`` go to every source factory (``max_record_bytes``…).
    """
    if not specs:
        raise DataError("no sources given: name files, globs, directories or e.g. sample:stdlib")
    opened: list[Source] = []
    for raw in specs:
        spec = os.fspath(raw)
        claimed = manager.claim("sources", spec, by="prefixes")
        if claimed is not None:
            opened.append(claimed.factory(spec, **options))  # type: ignore[attr-defined]
            continue
        for path in _expand(spec, manager):
            opened.append(_for_file(path, manager).factory(path, **options))
    return opened


def _for_file(path: str, manager: PluginManager) -> SourceType:
    claimed = manager.claim("sources", without_compression(path), by="suffixes")
    if claimed is None:
        suffixes = sorted(
            {s for rec in manager.components("sources").values() for s in rec.suffixes}  # type: ignore[attr-defined]
        )
        raise manager.unknown_error(
            "sources",
            path,
            f"no source reads {path!r}: known file suffixes are {', '.join(suffixes)}",
        )
    assert isinstance(claimed, SourceType)
    return claimed


def _expand(spec: str, manager: PluginManager) -> list[str]:
    if glob.has_magic(spec):
        found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not found:
            raise DataError(f"the pattern {spec!r} matches no files")
        return found
    path = Path(spec)
    if path.is_dir():
        readable = sorted(
            str(p)
            for p in path.rglob("*")
            if p.is_file() and manager.claim("sources", without_compression(str(p)), by="suffixes")
        )
        if not readable:
            raise DataError(f"the directory {spec!r} holds no file that any source reads")
        return readable
    if not path.exists():
        prefixes = sorted(
            {p for rec in manager.components("sources").values() for p in rec.prefixes}  # type: ignore[attr-defined]
        )
        raise DataError(
            f"source {spec!r} not found: give an existing file, directory or glob, "
            f"or a spec starting with {', '.join(prefixes)}"
        )
    return [spec]
