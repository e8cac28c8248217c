"""The dataset manifest: written last and atomically, so a dataset either is complete or says not."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from itertools import chain, compress
from itertools import count as count_from
from operator import gt, itemgetter
from pathlib import Path
from typing import Any

import orjson

from gristmill.errors import DatasetError
from gristmill.layout import FORMAT, FORMAT_VERSION, INCOMPLETE, MANIFEST, TOKENIZER_DIR
from gristmill.plugin.atomic import (
    write_atomic,
)
from gristmill.plugin.components import Tokenizer, TokenizerType
from gristmill.plugin.files import sha256_of
from gristmill.plugin.manager import PluginManager

COUNTS = ("num_documents", "num_tokens", "num_loss_tokens")  # of a split, and of each shard
# What every reader relies on, with the type it must have.
TOP_LEVEL = {
    "dtype": (str, "a string"),
    "shard_format": (dict, "an object"),
    "tokenizer": (dict, "an object"),
    "splits": (dict, "an object"),
}
SHA256 = re.compile(r"[0-9a-f]{64}")
SEAL = "manifest_sha256"  # the manifest's own SHA-256, see write_manifest
INDEX = "index"  # split → the file entry of its offsets index (store.index)
LOSS = "loss"  # in a split's index entry: the file entry of its loss index (store.index)
METADATA_TYPES = ("bool", "int", "float", "string")  # of a metadata column (store.metadata)
UNSEALED = "0" * 64  # the seal's value while the manifest is hashed


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest of the dataset in ``directory`` (see :func:`write_sealed`), its offsets
    index made first from the offsets files it lists (:func:`gristmill.store.index.with_index`)."""
    from gristmill.store.index import with_index  # which reads manifests: imported when used

    return write_sealed(directory, with_index(directory, manifest))


def write_sealed(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest`` as it is, sealed: its key ``manifest_sha256`` holds the SHA-256 of the
    bytes written with that value replaced by 64 zeros, so any changed byte breaks the seal.
    Returns the manifest as written, seal included (what reading it back gives)."""
    text = json.dumps({**manifest, SEAL: UNSEALED}, indent=2, sort_keys=True, ensure_ascii=False)
    data = (text + "\n").encode()
    seal = hashlib.sha256(data).hexdigest()
    write_atomic(directory / MANIFEST, data.replace(_seal_field(UNSEALED), _seal_field(seal)))
    return {**manifest, SEAL: seal}


# Only a top-level key starts a line indented by two spaces (a string value holds no raw newline
# or quote), so these bytes occur once in a manifest as written: the seal's value follows them.
SEAL_START = f'\n  "{SEAL}": "'.encode()


def _seal_field(value: str) -> bytes:
    return SEAL_START + value.encode() + b'"'


def seal_matches(data: bytes) -> bool | None:
    """Whether the manifest bytes ``data`` hold exactly one seal, 64 hex digits, that matches
    them; ``None`` when they hold no seal (written by a gristmill before seals)."""
    at = data.find(SEAL_START)
    if at < 0:
        return False if f'"{SEAL}"'.encode() in data else None
    if data.find(SEAL_START, at + 1) >= 0:
        return False
    start = at + len(SEAL_START)
    end = start + len(UNSEALED)
    seal = data[start:end].decode("ascii", "replace")
    if not SHA256.fullmatch(seal) or data[end : end + 1] != b'"':
        return False
    view = memoryview(data)
    digest = hashlib.sha256(view[:start])
    digest.update(UNSEALED.encode())
    digest.update(view[end:])
    return digest.hexdigest() == seal


def new_generation() -> str:
    """A fresh id for one prepare (the manifest's ``generation``): a reader tells the dataset it
    opened from one prepared into the same directory since by it."""
    return os.urandom(16).hex()  # random, like a uuid4, without importing uuid


def file_entry(root: Path, relative: str) -> dict[str, Any]:
    """The manifest's entry for the file ``root / relative``: its path, size and SHA-256."""
    with open(root / relative, "rb", buffering=0) as f:
        sha256, size = sha256_of(f)
    return {"path": relative, "bytes": size, "sha256": sha256}


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete dataset, once it is known to agree with itself (O(number of
    files), no file read but the manifest) and the tokenizer files it lists are there with
    their sizes; a clear error for anything else."""
    path = Path(directory)
    manifest, data = load_manifest(path)
    if seal_matches(data) is False:
        raise DatasetError(broken_seal(path), where=str(path / MANIFEST))
    for key, problem in manifest_problems(manifest):
        raise DatasetError(
            f"{key}: {problem}; the manifest was edited or damaged: run "
            f"`gristmill verify {path}`, or prepare the dataset again",
            where=str(path / MANIFEST),
        )
    for entry in manifest["tokenizer"].get("files", []):
        _check_present(path, entry)
    return manifest


def broken_seal(directory: Path) -> str:
    """What is wrong with a manifest whose seal does not match its bytes, and what to do."""
    return (
        f"its {SEAL} does not match its bytes: the manifest was edited or damaged after "
        f"prepare wrote it; run `gristmill verify {directory}` to see what else changed, or "
        "prepare the dataset again"
    )


def load_manifest(path: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest of a complete dataset of a format version this gristmill reads, and its
    bytes as read; unchecked otherwise (``gristmill verify`` reports every problem of it)."""
    if not path.is_dir():
        raise DatasetError(
            "no such dataset directory (create one with `gristmill prepare`)", where=str(path)
        )
    if (path / INCOMPLETE).exists():
        raise DatasetError(
            "this dataset is incomplete (prepare was interrupted or failed); "
            "run the same `gristmill prepare` command again",
            where=str(path),
        )
    try:
        data = (path / MANIFEST).read_bytes()
        manifest = _parsed(data)
    except FileNotFoundError:
        raise DatasetError(
            f"no {MANIFEST}; this is not a gristmill dataset", where=str(path)
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", where=str(path / MANIFEST)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError("not a gristmill dataset manifest", where=str(path / MANIFEST))
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DatasetError(
            f"format version {version} is newer than this gristmill reads "
            f"({FORMAT_VERSION}); upgrade gristmill",
            where=str(path),
        )
    return manifest, data


def _parsed(data: bytes) -> Any:
    """The manifest's JSON: orjson parses the manifest of a large dataset (10,000s of shard
    entries, read at every open) faster; what it refuses, the standard parser reads again to
    accept what orjson does not or to say precisely where it is malformed."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8"))


def manifest_problems(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Where the manifest lacks what a reader relies on or disagrees with itself, as (key, what
    is wrong). Nothing but the manifest is read."""
    malformed = list(malformed_entries(manifest))
    yield from malformed
    if not malformed:
        yield from count_mismatches(manifest)


def malformed_entries(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Keys a reader needs that are missing or of the wrong type: every count a non-negative
    integer, every file entry ``{path, bytes, sha256}``."""
    wrong = [key for key, (kind, _) in TOP_LEVEL.items() if not isinstance(manifest.get(key), kind)]
    for key in wrong:
        yield key, f"missing, or not {TOP_LEVEL[key][1]}"
    generation = manifest.get("generation")
    if generation is not None and not isinstance(generation, str):
        yield "generation", f"{generation!r} is not a string"
    if wrong:
        return
    if not isinstance(manifest["shard_format"].get("name"), str):
        yield "shard_format.name", "missing, or not a string"
    files = manifest["tokenizer"].get("files", [])
    if not isinstance(files, list):
        yield "tokenizer.files", "not a list"
    else:
        for i, entry in enumerate(files):
            yield from _file_problems(f"tokenizer.files[{i}]", entry)
    for split, entry in manifest["splits"].items():
        yield from _split_problems(f"splits.{split}", entry)
    yield from _metadata_problems(manifest)
    yield from _index_problems(manifest)


def _index_problems(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The offsets index's entries, where there is one: a file entry and the digest of what it
    was made of for a split that has shards with offsets files."""
    index = manifest.get(INDEX, {})
    if not isinstance(index, dict):
        yield INDEX, "not an object"
        return
    for split, entry in index.items():
        at = f"{INDEX}.{split}"
        listed = manifest["splits"].get(split)
        shards = listed.get("shards") if isinstance(listed, dict) else None
        if not isinstance(shards, list) or not _all_have_offsets(shards):
            yield at, "an index of no split with offsets files"
            continue
        yield from _file_problems(at, entry)
        digest = entry.get("offsets_digest") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            yield f"{at}.offsets_digest", f"{digest!r} is not a SHA-256 hex digest"
        loss = entry.get(LOSS) if isinstance(entry, dict) else None
        if loss is not None:
            yield from _file_problems(f"{at}.{LOSS}", loss)
            digest = loss.get("masks_digest") if isinstance(loss, dict) else None
            if not isinstance(digest, str) or not SHA256.fullmatch(digest):
                yield f"{at}.{LOSS}.masks_digest", f"{digest!r} is not a SHA-256 hex digest"


def _all_have_offsets(shards: list[Any]) -> bool:
    """Whether every shard entry has an offsets file entry (found in C, as :func:`_well_formed`)."""
    try:
        return set(map(type, map(itemgetter("offsets"), shards))) <= {dict}
    except (KeyError, TypeError):
        return False


def _metadata_problems(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The metadata columns' entries, where the documents have metadata: every column of a
    known type with its string table's files, and in every split the file of each column."""
    columns = manifest.get("metadata", {})
    if not isinstance(columns, dict):
        yield "metadata", "not an object"
        return
    for key, column in columns.items():
        at = f"metadata.{key}"
        if not isinstance(column, dict) or column.get("type") not in METADATA_TYPES:
            yield at, f"not a column of a type among {', '.join(METADATA_TYPES)}"
        elif column["type"] == "string":
            yield from _file_problems(f"{at}.strings", column.get("strings"))
            yield from _file_problems(f"{at}.offsets", column.get("offsets"))
            if not _is_count(column.get("distinct")):
                yield f"{at}.distinct", f"{column.get('distinct')!r} is not a count"
    for split, entry in manifest["splits"].items():
        values = entry.get("metadata", {}) if isinstance(entry, dict) else {}
        at = f"splits.{split}.metadata"
        if not isinstance(values, dict):
            yield at, "not an object"
            continue
        for key in sorted(set(columns) ^ set(values)):
            where = "the split" if key in columns else "the manifest's metadata"
            yield f"{at}.{key}", f"missing from {where}"
        for key, entry in values.items():
            yield from _file_problems(f"{at}.{key}", entry)


def _split_problems(key: str, split: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(split, dict):
        yield key, "not an object"
        return
    yield from _count_problems(key, split)
    shards = split.get("shards")
    if not isinstance(shards, list):
        yield f"{key}.shards", "missing, or not a list"
        return
    if _well_formed(shards):
        return
    for i, shard in enumerate(shards):
        at = f"{key}.shards[{i}]"
        if not isinstance(shard, dict):
            yield at, "not an object"
            continue
        yield from _count_problems(at, shard)
        for name, value in shard.items():
            if isinstance(value, dict):
                yield from _file_problems(f"{at}.{name}", value)


def _well_formed(shards: list[Any]) -> bool:
    """Whether the loop of :func:`_split_problems` would find nothing in these shard entries,
    found in a few passes that run in C (a manifest of a large dataset lists 10,000s, checked at
    every open); ``False`` where it might find something, and it then looks."""
    try:
        counts = list(chain.from_iterable(map(itemgetter(*COUNTS), shards)))
        values = chain.from_iterable(map(dict.values, shards))
        files = [value for value in values if isinstance(value, dict)]
        paths = list(map(itemgetter("path"), files))
        counts += map(itemgetter("bytes"), files)
        digests = list(map(itemgetter("sha256"), files))
        hexes = "".join(digests).encode("ascii")
    except (KeyError, TypeError, UnicodeEncodeError):
        return False
    return (
        set(map(type, counts)) <= {int}
        and min(counts, default=0) >= 0
        and set(map(type, paths)) <= {str}
        and all(paths)
        and set(map(len, digests)) <= {64}
        and not hexes.translate(None, b"0123456789abcdef")
    )


def _count_problems(key: str, entry: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for count in COUNTS:
        if not _is_count(entry.get(count)):
            yield f"{key}.{count}", f"{entry.get(count)!r} is not a count"


def count_mismatches(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Counts of a well-formed manifest that disagree: a split's with the sums of its shards', a
    shard's loss tokens with its tokens."""
    for name, split in manifest["splits"].items():
        shards = split["shards"]
        # Counts a shard in plain lists: sums and comparisons over them run in C.
        counts = {count: list(map(itemgetter(count), shards)) for count in COUNTS}
        over = map(gt, counts["num_loss_tokens"], counts["num_tokens"])
        for i in compress(count_from(), over):
            shard = shards[i]
            yield (
                f"splits.{name}.shards[{i}].num_loss_tokens",
                f"{shard['num_loss_tokens']}, more than its {shard['num_tokens']} tokens",
            )
        for count in COUNTS:
            total = sum(counts[count])
            if split[count] != total:
                yield f"splits.{name}.{count}", f"{split[count]}, but the shards add up to {total}"
    for name, entry in manifest.get(INDEX, {}).items():
        shards = manifest["splits"][name]["shards"]
        size = 8 * (sum(map(itemgetter("num_documents"), shards)) + len(shards))
        if entry["bytes"] != size:
            yield f"{INDEX}.{name}.bytes", f"{entry['bytes']}, but its shards' offsets take {size}"
        if LOSS in entry and entry[LOSS]["bytes"] % 16:
            yield (
                f"{INDEX}.{name}.{LOSS}.bytes",
                f"{entry[LOSS]['bytes']}, not whole (start, end) pairs",
            )


def _file_problems(key: str, entry: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(entry, dict):
        yield key, "not a file entry ({path, bytes, sha256})"
        return
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        yield f"{key}.path", "missing, or not a path"
    if not _is_count(entry.get("bytes")):
        yield f"{key}.bytes", f"{entry.get('bytes')!r} is not a size"
    if not isinstance(entry.get("sha256"), str) or not SHA256.fullmatch(entry["sha256"]):
        yield f"{key}.sha256", f"{entry.get('sha256')!r} is not a SHA-256 hex digest"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def listed_files(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every file entry of a manifest that :func:`manifest_problems` accepts: the tokenizer's
    files, then every split's shard files, then the metadata's, then the offsets indexes'."""
    yield from manifest["tokenizer"].get("files", [])
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            yield from (value for value in shard.values() if isinstance(value, dict))
    yield from metadata_files(manifest)
    yield from index_files(manifest)


def index_files(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The file entries of the indexes (of a manifest :func:`manifest_problems` accepts): every
    split's offsets index, then its loss index where it has one."""
    for entry in manifest.get(INDEX, {}).values():
        yield entry
        if LOSS in entry:
            yield entry[LOSS]


def metadata_files(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The file entries of the metadata (of a manifest :func:`manifest_problems` accepts): the
    string columns' tables, then every split's values."""
    for column in manifest.get("metadata", {}).values():
        yield from (column[name] for name in ("strings", "offsets") if name in column)
    for split in manifest["splits"].values():
        yield from split.get("metadata", {}).values()


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` when that stays inside ``root`` (no absolute path, no ``..`` or link
    out of it), else ``None``."""
    base = root.resolve()
    path = (base / relative).resolve()
    return path if path.is_relative_to(base) and path != base else None


def _check_present(root: Path, entry: dict[str, Any]) -> None:
    """The listed file is inside the dataset and has the size the manifest gives."""
    path = inside(root, entry["path"])
    if path is None:
        raise DatasetError(
            f"manifest path {entry['path']!r} leads outside the dataset", where=str(root)
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(
            "missing (the manifest lists it); prepare the dataset again", where=str(path)
        ) from None
    if size != entry["bytes"]:
        raise DatasetError(
            f"{size} bytes on disk, manifest expects {entry['bytes']} (truncated or replaced; "
            f"run `gristmill verify {root}`, or prepare the dataset again)",
            where=str(path),
        )


def check_generation(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Refuse when the dataset at ``directory`` is no longer the one ``manifest`` describes.

    Called after the files the reader relies on were checked or read: ``prepare`` removes a
    dataset (its manifest included) before it writes the next one, so when the manifest still
    holds the same generation, nothing read before came from another.
    """
    path = Path(directory)
    generation = manifest.get("generation")
    try:
        data = (path / MANIFEST).read_bytes()
        # A random id found as written is this generation: no second parse of a large manifest.
        if generation is not None and f'"generation": "{generation}"'.encode() in data:
            return
        current = json.loads(data).get("generation", None)
    except (OSError, ValueError, AttributeError):
        current = "(none: no readable manifest)"
    if current != generation:
        raise generation_changed(path, current, generation)


def generation_changed(directory: Path, current: Any, opened: Any) -> DatasetError:
    """The error for a dataset found at generation ``current`` where ``opened`` was opened."""
    return DatasetError(
        f"the dataset changed since it was opened: {MANIFEST} holds generation {current}, "
        f"not {opened} (prepared again?); open it again",
        where=str(directory),
    )


def saved_files(directory: Path) -> list[dict[str, Any]]:
    """The manifest's entries for every file the tokenizer saved in the dataset ``directory``."""
    folder = directory / TOKENIZER_DIR
    return [
        file_entry(directory, path.relative_to(directory).as_posix())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def load_saved(directory: Path, manifest: dict[str, Any], manager: PluginManager) -> Tokenizer:
    """The tokenizer stored in a dataset directory, refused if the dataset was prepared again
    since ``manifest`` was read (its files may be another tokenizer's)."""
    entry = manifest["tokenizer"]
    family = manager.get(TokenizerType, entry["name"])
    tokenizer = family.load(directory / TOKENIZER_DIR, entry["config"])
    check_generation(directory, manifest)
    return tokenizer
