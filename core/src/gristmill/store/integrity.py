"""A file the manifest lists, opened and checked before gristmill serves or exports its bytes.

The check itself, and the stamps that spare hashing a file twice on one machine, live in the
plugin kit (:mod:`gristmill.plugin.integrity`), where shard formats reach them too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gristmill.errors import DatasetError
from gristmill.plugin.integrity import cache_dir, check_open_file
from gristmill.store.manifest import inside

__all__ = ["cache_dir", "check_intact", "check_open_file", "read_intact"]


def check_intact(dataset: Path, entry: Mapping[str, Any]) -> None:
    """Raise :class:`~gristmill.errors.DatasetError` unless the file of the manifest ``entry``
    (``{path, bytes, sha256}``) lies inside ``dataset`` with the size and SHA-256 it gives."""
    os.close(_open_intact(dataset, entry))


def read_intact(dataset: Path, entry: Mapping[str, Any]) -> bytes:
    """The bytes of the file of the manifest ``entry``, once :func:`check_intact` holds for the
    very file read (one descriptor for both)."""
    fd = _open_intact(dataset, entry)
    try:
        chunks, left = [], entry["bytes"]
        while left:  # a large read may come back short
            chunk = os.read(fd, left)
            if not chunk:
                raise DatasetError(
                    "the file changed while it was being read (written in place?); prepare "
                    "the dataset again",
                    where=str(dataset / entry["path"]),
                )
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open_intact(dataset: Path, entry: Mapping[str, Any]) -> int:
    """A descriptor of the file of ``entry``, checked (see :func:`check_intact`)."""
    path = inside(dataset, entry["path"])
    if path is None:
        raise DatasetError(
            f"manifest path {entry['path']!r} leads outside the dataset", where=str(dataset)
        )
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DatasetError(
            f"missing (the manifest lists it); run `gristmill verify {dataset}`, then prepare "
            "the dataset again",
            where=str(dataset / entry["path"]),
        ) from None
    try:
        check_open_file(fd, entry, dataset=dataset)
    except BaseException:
        os.close(fd)
        raise
    return fd
