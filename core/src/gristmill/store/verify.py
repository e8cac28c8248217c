"""``gristmill verify``: everything a dataset's manifest promises, checked against its files.

The manifest is read as ``open_dataset`` reads it (format, version), its seal
(``manifest_sha256``) is checked against its bytes, and it is checked against itself (every
split's counts add up to its shards', every entry well-formed). Then every file it lists,
the tokenizer's, every shard's and the metadata's, stays inside the dataset directory, exists,
has its size and its SHA-256; no file the manifest does not list lies in a directory gristmill
owns (the splits', ``tokenizer/``, ``metadata/`` and ``index/``); the shard format's own check
reads each intact shard in full (for memmap shards: the offsets, the token ids against the
vocabulary, the mask); intact metadata files are checked against their columns' types, the
documents' count and the string tables; and an intact offsets index against the offsets files
it repeats.

A dataset at a URL is checked in its mirror (:mod:`gristmill.plugin.remote`), once
:func:`fetch_every_file` has fetched every file there: an object that is not as the manifest
lists it, or not on the server, is a problem of that file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gristmill.errors import DatasetError, PluginError, UnknownComponentError
from gristmill.layout import INDEX_DIR, MANIFEST, METADATA_DIR, TOKENIZER_DIR
from gristmill.plugin.components import Problem, ShardFormatType
from gristmill.plugin.files import sha256_of
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.plugin.remote import CACHE_LIMIT_VARIABLE, Mirror
from gristmill.plugin.remote.mirror import Mismatch
from gristmill.plugin.remote.urls import is_missing
from gristmill.store.index import index_problems
from gristmill.store.manifest import (
    SEAL,
    broken_seal,
    count_mismatches,
    index_files,
    inside,
    listed_files,
    load_manifest,
    malformed_entries,
    metadata_files,
    seal_matches,
)
from gristmill.store.metadata import column_problems


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
        manifest, data = load_manifest(root)
    except DatasetError as exc:
        return [Problem(exc.where or str(root), exc.reason)]
    found = list(_seal_problems(root, data))
    malformed = [Problem(f"{MANIFEST}: {key}", what) for key, what in malformed_entries(manifest)]
    if malformed:  # the entries below cannot be followed
        return found + malformed
    found += [Problem(f"{MANIFEST}: {key}", what) for key, what in count_mismatches(manifest)]
    try:
        found.extend(_problems(root, manifest, manager or get_manager(), progress))
    except (KeyError, TypeError, AttributeError) as exc:  # a key of the shard format's missing
        found.append(Problem(MANIFEST, f"malformed manifest ({type(exc).__name__}: {exc})"))
    return found


def fetch_every_file(
    mirror: Mirror, *, progress: Callable[[int], None] = lambda nbytes: None
) -> list[Problem]:
    """Fetch every file the manifest of ``mirror`` lists into it (each checked against the
    manifest's size and SHA-256 as it lands): the files that are not as the manifest lists them
    on the server, or not there, as problems. ``progress(nbytes)`` is called per file. Any other
    failure (access denied, the server unreachable) is raised: no file could be checked.

    Every file must stay in the mirror to be checked: a ``cache_limit`` below the dataset's
    size is refused before anything is fetched."""
    try:
        manifest, _ = load_manifest(mirror.root)
    except DatasetError:
        return []  # verify reports why
    if any(malformed_entries(manifest)):
        return []  # likewise: the entries cannot be followed
    entries = {entry["path"]: entry for entry in listed_files(manifest)}  # what verify checks
    total = sum(entry["bytes"] for entry in entries.values())
    if mirror.cache_limit is not None and total > mirror.cache_limit:
        raise DatasetError(
            f"verify holds the whole dataset in the mirror ({total:,} bytes), more than its "
            f"cache_limit of {mirror.cache_limit:,} bytes ({CACHE_LIMIT_VARIABLE}); unset or "
            "raise it to verify",
            where=mirror.url,
        )
    found = []
    for name, entry in entries.items():
        try:
            mirror.fetch(entry)
        except DatasetError as error:
            cause = error.__context__  # what the mirror's retries met last
            if not isinstance(cause, Mismatch) and not (cause and is_missing(cause)):
                raise
            found.append(Problem(name, f"{error.reason} ({error.where})"))
        progress(entry["bytes"])
    return found


def _seal_problems(root: Path, data: bytes) -> Iterator[Problem]:
    """The manifest's own seal: a byte changed anywhere in it breaks the seal. A manifest
    without one is reported too, since no change to it could be seen."""
    sealed = seal_matches(data)
    if sealed is False:
        yield Problem(MANIFEST, broken_seal(root))
    elif sealed is None:
        yield Problem(
            MANIFEST,
            f"no {SEAL}: written by a gristmill from before manifests were sealed, so a change "
            "to the manifest cannot be seen; prepare the dataset again to seal it",
        )


def _problems(
    root: Path,
    manifest: dict[str, Any],
    manager: PluginManager,
    progress: Callable[[int], None],
) -> Iterator[Problem]:
    name = manifest["shard_format"]["name"]
    try:
        fmt = manager.get(ShardFormatType, name)
    except (UnknownComponentError, PluginError) as exc:  # damaged, or its plugin is not here
        yield Problem(f"{MANIFEST}: shard_format.name", f"{exc}; its shards are not read")
        fmt = None
    vocab_size = manifest["tokenizer"].get("vocab_size")
    for entry in manifest["tokenizer"].get("files", []):
        yield from check_file(root, entry, progress)
    damaged = False  # a shard file: an index of the shards cannot be compared with them
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            found = [p for f in files(shard) for p in check_file(root, f, progress)]
            yield from found
            damaged = damaged or bool(found)
            if not found and fmt is not None and fmt.verify is not None:
                yield from fmt.verify(root, shard, dtype=manifest["dtype"], vocab_size=vocab_size)
    found = [p for entry in metadata_files(manifest) for p in check_file(root, entry, progress)]
    yield from found
    if not found:
        yield from column_problems(root, manifest)
    found = [p for e in index_files(manifest) for p in check_file(root, e, progress)]
    yield from found
    if not found and not damaged:
        yield from index_problems(root, manifest)
    yield from _unlisted(root, manifest)


def files(shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The file entries of a shard entry (``{"path", "bytes", "sha256"}``)."""
    for value in shard.values():
        if isinstance(value, dict) and "path" in value:
            yield value


def _unlisted(root: Path, manifest: dict[str, Any]) -> Iterator[Problem]:
    """Files in the directories gristmill owns (every split's, the tokenizer's) that the
    manifest does not list: nothing a reader would read, but not the dataset that was written."""
    listed = {entry["path"] for entry in listed_files(manifest)}
    for folder in (TOKENIZER_DIR, *manifest["splits"], METADATA_DIR, INDEX_DIR):
        if inside(root, folder) is None:
            continue  # a split name that leads out of the directory is not gristmill's folder
        for path in sorted((root / folder).rglob("*")):
            where = path.relative_to(root).as_posix()
            if not path.is_dir() and where not in listed:
                yield Problem(
                    where,
                    "not listed in the manifest (added after prepare, or left by a killed "
                    "run); remove it, or prepare the dataset again",
                )


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
    with open(path, "rb", buffering=0) as f:
        found = sha256_of(f, progress)[0]
    if found != entry["sha256"]:
        yield Problem(
            where,
            f"SHA-256 {found[:16]}…, but the manifest says {entry['sha256'][:16]}… "
            "(the content changed)",
        )
