"""The offsets index: every shard's document offsets of a split in one file, so that opening a
dataset reads one file where it read one a shard.

``index/SPLIT.offsets`` holds the ``.offsets`` files of the split's shards (``memmap-shards``)
concatenated, in the order the manifest lists them. The manifest's ``index`` object lists it by
split: a file entry (``path``, ``bytes``, ``sha256``) and ``offsets_digest``, the SHA-256 of the
shards' offsets files' own SHA-256 digests (hex, one after another), which ties the index to the
files it was made of. Written with the manifest (:func:`with_index`); read by ``open_dataset``
where it matches the manifest (:func:`index_lengths`), which otherwise reads every shard's
offsets as before (datasets written without it); checked by ``gristmill verify``.

A split with loss masks gets a loss index too, ``index/SPLIT.loss``: the runs of tokens that
carry loss (a nonzero mask byte; every token of a shard without a mask), as int64 pairs
``(start, end)`` in the split's token stream (its shards' tokens one after another), ascending,
a shard's runs ending at its last token. Its entry is the ``loss`` object of the split's index
entry (``path``, ``bytes``, ``sha256``, and ``masks_digest``: the SHA-256 of the shards' mask
files' digests, a shard without a mask counting its tokens file's). It answers whether a span of
a document carries loss without reading the masks (:func:`index_loss_runs`,
:func:`gristmill.serve.samples.runs_no_loss`), so that opening a dataset with masks reads no shard file.
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


def masks_digest(shards: Sequence[dict[str, Any]]) -> str:
    """What a loss index of ``shards`` is made of: the SHA-256 of their masks' digests (of the
    tokens file where a shard has no mask: its every token carries loss)."""
    digests = ((shard.get("mask") or shard["tokens"])["sha256"] for shard in shards)
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
        loss = _loss_index(directory, split, shards)
        if loss is not None:
            index[split]["loss"] = loss
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


def _loss_index(
    directory: Path, split: str, shards: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """Write the loss index of a split whose shards have masks (see the module's doc): its
    entry, or ``None`` for a split without masks, or one whose masks are not as listed (said
    in the log: a reader then reads the masks)."""
    if not any(shard.get("mask") for shard in shards):
        return None
    data = _split_runs(directory, shards)
    if data is None:
        return None
    relative = f"{INDEX_DIR}/{split}.loss"
    write_atomic(directory / relative, data)
    return {
        "path": relative,
        "bytes": len(data),
        "sha256": _sha256(data),
        "masks_digest": masks_digest(shards),
    }


def _split_runs(directory: Path, shards: Sequence[dict[str, Any]]) -> bytes | None:
    """The bytes of the loss index of ``shards``; ``None`` (and a warning) when a mask is not
    there, inside the dataset, with the size and SHA-256 the manifest gives."""
    runs, at = [], 0
    folders: dict[str, Path | None] = {}
    for shard in shards:
        entry, tokens = shard.get("mask"), shard["num_tokens"]
        if entry is None:  # every token carries loss
            runs.append(np.array([[at, at + tokens]] if tokens else [], np.int64).reshape(-1, 2))
            at += tokens
            continue
        data = _listed_bytes(directory, entry, folders) if isinstance(entry, dict) else None
        if data is None or len(data) != tokens:
            where = entry["path"] if isinstance(entry, dict) else "a mask that is no file entry"
            log.warning(f"{directory}: no loss index written: {where} is not as listed")
            return None
        runs.append(loss_runs(np.frombuffer(data, np.uint8)) + at)
        at += tokens
    return np.concatenate(runs).astype("<i8").tobytes()


def loss_runs(mask: np.ndarray) -> np.ndarray:
    """The runs of nonzero bytes of ``mask``: ``(start, end)`` pairs (int64, one a row)."""
    edges = np.diff(np.concatenate([[0], mask != 0, [0]]).astype(np.int8))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], 1).astype(np.int64)


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


def loss_entry(directory: Path, manifest: dict[str, Any], split: str) -> dict[str, Any] | None:
    """The entry of ``split``'s loss index where it has one made of the masks the manifest lists;
    ``None`` where it has none (a split without masks, or prepared before there was one), or a
    stale one (said in the log)."""
    entry = manifest.get(INDEX, {}).get(split, {}).get("loss")
    if not isinstance(entry, dict):
        return None
    if entry.get("masks_digest") != masks_digest(manifest["splits"][split]["shards"]):
        log.warning(
            f"{directory / str(entry.get('path'))}: made of other masks than the manifest lists "
            f"(changed after prepare?); read every shard's mask instead: run `gristmill "
            f"verify {directory}`"
        )
        return None
    return entry


def read_loss_runs(directory: Path, entry: dict[str, Any], tokens: int) -> np.ndarray:
    """The runs of a loss index (``(start, end)`` rows, int64) once its file is found intact
    (:func:`~gristmill.store.integrity.read_intact`) and its runs ascending, apart and inside
    the split's ``tokens``; refused otherwise, naming the file."""
    data = read_intact(directory, entry)
    runs = np.frombuffer(data[: len(data) // 16 * 16], "<i8").reshape(-1, 2)
    flat = runs.reshape(-1)
    if len(data) % 16 or (np.diff(flat) < 0).any() or (runs[:, 0] >= runs[:, 1]).any():
        problem = "not ascending (start, end) pairs of int64"
    elif len(flat) and (flat[0] < 0 or flat[-1] > tokens):
        problem = f"runs outside the split's {tokens} tokens"
    else:
        return runs
    raise DatasetError(f"{entry['path']}: {problem}; run `gristmill verify {directory.resolve()}`")


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
    lists, and their bytes, one after another; and of an intact loss index: the runs of the
    masks the manifest lists."""
    for split, entry in manifest.get(INDEX, {}).items():
        shards = manifest["splits"][split]["shards"]
        if "loss" in entry:
            yield from _loss_problems(root, shards, entry["loss"])
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


def _loss_problems(
    root: Path, shards: Sequence[dict[str, Any]], entry: dict[str, Any]
) -> Iterator[Problem]:
    if entry["masks_digest"] != masks_digest(shards):
        yield Problem(
            entry["path"],
            "made of other masks than the manifest lists (its masks_digest differs): a shard's "
            "mask changed after prepare",
        )
    elif _split_runs(root, shards) != (root / entry["path"]).read_bytes():
        yield Problem(entry["path"], "differs from the runs of loss tokens of the shards' masks")
