"""``gristmill verify``: everything a dataset's manifest promises, checked against its files.

The manifest is read as ``open_dataset`` reads it (format, version). Then, per split: the shard
counts add up to the split's; every file the manifest lists stays inside the dataset directory,
exists, has its size and its SHA-256; and the shard format's own check reads each intact shard
in full (for memmap shards: the offsets, the token ids against the vocabulary, the mask).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gristmill.components import Problem
from gristmill.errors import GristmillError
from gristmill.manifest import MANIFEST, read_manifest
from gristmill.plugins import PluginManager, get_manager

COUNTS = ("num_documents", "num_tokens", "num_loss_tokens")
READ = 1 << 22  # bytes hashed at a time


def verify(
    directory: str | os.PathLike[str],
    *,
    manager: PluginManager | None = None,
    progress: Callable[[int], None] = lambda nbytes: None,
) -> list[Problem]:
    """Every problem found in the dataset at ``directory`` (an empty list: it is whole).

    ``progress(nbytes)`` is called as file bytes are hashed.
    """
    root = Path(directory)
    try:
        manifest = read_manifest(root)
    except GristmillError as exc:
        return [Problem(str(root / MANIFEST), str(exc))]
    try:
        return list(_problems(root, manifest, manager or get_manager(), progress))
    except (KeyError, TypeError, AttributeError) as exc:  # a key missing, or of another type
        return [Problem(str(root / MANIFEST), f"malformed manifest ({type(exc).__name__}: {exc})")]


def _problems(
    root: Path,
    manifest: dict[str, Any],
    manager: PluginManager,
    progress: Callable[[int], None],
) -> Iterator[Problem]:
    fmt = manager.shard_format(manifest["shard_format"]["name"])
    vocab_size = manifest["tokenizer"].get("vocab_size")
    for split, entry in manifest["splits"].items():
        shards = entry["shards"]
        for key in COUNTS:
            total = sum(shard[key] for shard in shards)
            if total != entry[key]:
                yield Problem(
                    f"{MANIFEST}: splits.{split}.{key}",
                    f"{entry[key]}, but the shards add up to {total}",
                )
        for shard in shards:
            found = [p for f in files(shard) for p in check_file(root, f, progress)]
            yield from found
            if not found and fmt.verify is not None:
                yield from fmt.verify(root, shard, dtype=manifest["dtype"], vocab_size=vocab_size)


def files(shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The file entries of a shard entry (``{"path", "bytes", "sha256"}``)."""
    for value in shard.values():
        if isinstance(value, dict) and "path" in value:
            yield value


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` when that stays inside ``root`` (no absolute path, no ``..`` or link
    out of it), else ``None``."""
    base = root.resolve()
    path = (base / relative).resolve()
    return path if path.is_relative_to(base) and path != base else None


def check_file(
    root: Path, entry: dict[str, Any], progress: Callable[[int], None]
) -> Iterator[Problem]:
    where = entry["path"]
    path = inside(root, where)
    if path is None:
        yield Problem(where, "the path leads outside the dataset directory")
        return
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        yield Problem(where, "missing")
        return
    if size != entry["bytes"]:
        yield Problem(where, f"{size} bytes, but the manifest says {entry['bytes']} (truncated?)")
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ):
            digest.update(block)
            progress(len(block))
    if digest.hexdigest() != entry["sha256"]:
        yield Problem(
            where,
            f"SHA-256 {digest.hexdigest()[:16]}…, but the manifest says {entry['sha256'][:16]}… "
            "(the content changed)",
        )
