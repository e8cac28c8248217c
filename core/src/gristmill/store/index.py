"""The offsets index: every shard's document offsets of a split in one file, so that opening a
dataset reads one file where it read one a shard.

``index/SPLIT.offsets`` holds the ``.offsets`` files of the split's shards (``memmap-shards``)
concatenated, in the order the manifest lists them. The manifest's ``index`` object lists it by
split: a file entry (``path``, ``bytes``, ``sha256``) and ``offsets_digest``, the SHA-256 of the
shards' offsets files' own SHA-256 digests (hex, one after another), which ties the index to the
files it was made of. Written with the manifest (:func:`with_index`); read by ``open_dataset``
where it matches the manifest (:func:`index_lengths`), which otherwise reads every shard's
offsets as before (datasets written without it); checked by ``gristmill verify``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from gristmill.errors import DatasetError
from gristmill.layout import INDEX_DIR
from gristmill.plugin.atomic import write_atomic
from gristmill.plugin.components import Problem
from gristmill.store.integrity import read_intact
from gristmill.store.manifest import INDEX, inside, manifest_problems

log = logging.getLogger("gristmill")

INDEXED_FORMAT = "memmap-shards"  # the shard format whose offsets files the index concatenates


def offsets_digest(shards: Sequence[dict[str, Any]]) -> str:
    """What an index of ``shards`` is made of: the SHA-256 of their offsets files' digests."""
    digests = map(itemgetter("sha256"), map(itemgetter("offsets"), shards))
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def with_index(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its ``index`` made anew from the offsets files it lists, each index file
    written into ``directory``: for every split with shards, where its shard format is
    ``memmap-shards``. A split whose offsets files are not as the manifest lists them gets none
    (said in the log): a reader then reads them one by one, and refuses them as it did before
    there was an index. A manifest that disagrees with itself (written wrong, or damaged) is
    returned as it is: nothing in it says what an index should hold."""
    shard_format = manifest.get("shard_format")
    if not isinstance(shard_format, dict) or shard_format.get("name") != INDEXED_FORMAT:
        return manifest
    if any(manifest_problems({key: value for key, value in manifest.items() if key != INDEX})):
        return manifest
    made = {key: value for key, value in manifest.items() if key != INDEX}
    index = {}
    for split, entry in manifest["splits"].items():
        shards = entry["shards"]
        relative = f"{INDEX_DIR}/{split}.offsets"
        if not shards or inside(directory, relative) is None:
            continue
        data = _concatenated(directory, shards)
        if data is None:
            continue
        (directory / INDEX_DIR).mkdir(exist_ok=True)
        write_atomic(directory / relative, data)
        index[split] = {
            "path": relative,
            "bytes": len(data),
            "sha256": _sha256(data),
            "offsets_digest": offsets_digest(shards),
        }
    return {**made, INDEX: index} if index else made


def _concatenated(directory: Path, shards: Sequence[dict[str, Any]]) -> bytes | None:
    """The shards' offsets files, one after another; ``None`` (and a warning) when one is not
    there, inside the dataset, with the size and SHA-256 the manifest gives."""
    parts = []
    folders: dict[str, Path | None] = {}  # resolved once each: resolving every path is slow
    for shard in shards:
        entry = shard.get("offsets")
        data = _listed_bytes(directory, entry, folders) if isinstance(entry, dict) else None
        if data is None:
            where = entry["path"] if isinstance(entry, dict) else "a shard without offsets"
            log.warning(f"{directory}: no offsets index written: {where} is not as listed")
            return None
        parts.append(data)
    return b"".join(parts)


def _listed_bytes(
    directory: Path, entry: dict[str, Any], folders: dict[str, Path | None]
) -> bytes | None:
    """The file of ``entry`` when it is inside ``directory`` (its folder resolved inside, the
    file itself no link) with the size and SHA-256 listed."""
    folder_name, _, name = entry["path"].rpartition("/")
    if folder_name not in folders:
        folders[folder_name] = inside(directory, folder_name) if folder_name else None
    folder = folders[folder_name]
    if folder is None or name in ("", ".", ".."):
        return None
    try:
        fd = os.open(folder / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with open(fd, "rb") as f:
        data = f.read()
    if len(data) != entry["bytes"] or _sha256(data) != entry["sha256"]:
        return None
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_lengths(directory: Path, manifest: dict[str, Any], split: str) -> np.ndarray | None:
    """Every document's token count in ``split`` (int64), read from its offsets index once the
    index is found to be the one of the offsets files the manifest lists and intact (its size and
    SHA-256: :func:`~gristmill.store.integrity.read_intact`); ``None`` where there is no index
    to read (or a stale one, said in the log). An index that does not tile its shards is
    refused, naming the shard's offsets file."""
    entry = manifest.get(INDEX, {}).get(split)
    if entry is None:
        return None
    shards = manifest["splits"][split]["shards"]
    if entry["offsets_digest"] != offsets_digest(shards):
        log.warning(
            f"{directory / entry['path']}: made of other offsets files than the manifest lists "
            f"(changed after prepare?); read every shard's offsets instead: run `gristmill "
            f"verify {directory}`"
        )
        return None
    docs = np.fromiter(map(itemgetter("num_documents"), shards), np.int64, len(shards))
    # Its size is the shards' offsets' (manifest_problems), so the shards' slices tile it.
    offsets = np.frombuffer(read_intact(directory, entry), "<i8")
    tokens = np.fromiter(map(itemgetter("num_tokens"), shards), np.int64, len(shards))
    return tiled_lengths(offsets, docs, tokens, _refuser(directory, shards))


def tiled_lengths(
    offsets: np.ndarray,
    docs: np.ndarray,
    tokens: np.ndarray,
    refuse: Callable[[int, str], NoReturn],
) -> np.ndarray:
    """The document lengths of shards whose offsets (``docs[k] + 1`` values for shard ``k``,
    which holds ``tokens[k]`` tokens) are concatenated in ``offsets``; ``refuse(k, problem)``
    is called for the first shard whose offsets do not start at 0, go back, or end short of or
    past its tokens (it raises)."""
    last = np.cumsum(docs + 1) - 1  # every shard's final offset
    first = last - docs
    steps = np.diff(offsets)
    steps[last[:-1]] = 0  # from one shard's final offset to the next shard's first
    if (offsets[first] != 0).any() or (offsets[last] != tokens).any() or (steps < 0).any():
        for k, problem in _untiled(offsets, first, last, tokens):
            refuse(k, problem)
    return np.delete(steps, last[:-1]).astype(np.int64)


def _untiled(
    offsets: np.ndarray, first: np.ndarray, last: np.ndarray, tokens: np.ndarray
) -> Iterator[tuple[int, str]]:
    for k, (lo, hi) in enumerate(zip(first.tolist(), last.tolist())):
        shard = offsets[lo : hi + 1]
        back = np.flatnonzero(np.diff(shard) < 0)
        if shard[0] != 0:
            yield k, f"the first offset is {shard[0]}, not 0"
        elif len(back):
            at = int(back[0])
            yield k, f"offsets go back from {shard[at]} to {shard[at + 1]} (document {at})"
        elif shard[-1] != tokens[k]:
            yield k, f"the last offset is {shard[-1]} but the shard has {tokens[k]} tokens"


def _refuser(directory: Path, shards: Sequence[dict[str, Any]]) -> Callable[[int, str], NoReturn]:
    """What refuses shard ``k``'s offsets: an error naming its offsets file, as the shard
    reader's does."""

    def refuse(k: int, problem: str) -> NoReturn:
        where = shards[k]["offsets"]["path"]
        raise DatasetError(f"{where}: {problem}; run `gristmill verify {directory.resolve()}`")

    return refuse


def index_problems(root: Path, manifest: dict[str, Any]) -> Iterator[Problem]:
    """``gristmill verify``'s check of an intact index: made of the offsets files the manifest
    lists, and their bytes, one after another."""
    for split, entry in manifest.get(INDEX, {}).items():
        shards = manifest["splits"][split]["shards"]
        if entry["offsets_digest"] != offsets_digest(shards):
            yield Problem(
                entry["path"],
                "made of other offsets files than the manifest lists (its offsets_digest "
                "differs): a shard's offsets changed after prepare",
            )
            continue
        data = (root / entry["path"]).read_bytes()
        at = 0
        for shard in shards:
            size = shard["offsets"]["bytes"]
            part = data[at : at + size]
            if part != (root / shard["offsets"]["path"]).read_bytes():
                yield Problem(
                    f"{entry['path']}[{at // 8}]",
                    f"differs from {shard['offsets']['path']}, which the index should repeat",
                )
                break
            at += size
        else:
            if at != len(data):
                yield Problem(entry["path"], f"{len(data) - at} bytes past its shards' offsets")
