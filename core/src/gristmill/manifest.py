"""The dataset manifest: written last and atomically, so a dataset either is complete or says not."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gristmill.errors import DatasetError

MANIFEST = "manifest.json"
INCOMPLETE = ".gristmill-incomplete"  # present while prepare is writing; removed after the manifest
FORMAT = "gristmill-dataset"
FORMAT_VERSION = 1


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint(value: Any) -> str:
    """A stable hash of a JSON-able value."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def durable() -> bool:
    """Whether writes are synced to disk: always, unless ``GRISTMILL_FSYNC=0``.

    Without syncing, a killed process still leaves nothing torn (renames are atomic, and the page
    cache outlives the process); only a power loss or kernel crash could. Test suites and
    throwaway outputs may turn it off.
    """
    return os.environ.get("GRISTMILL_FSYNC", "1") != "0"


def write_atomic(path: Path, data: bytes | memoryview, *, sync_directory_too: bool = True) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new, never part.

    With ``sync_directory_too=False`` the rename is durable only after a later
    :func:`sync_directory` of the parent: one sync for many files.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if durable():
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_directory_too:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make renames inside ``directory`` durable (a no-op where directories cannot be opened)."""
    if not durable():
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomic(directory / MANIFEST, text.encode())


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a complete dataset; a clear error for anything else."""
    path = Path(directory)
    if not path.is_dir():
        raise DatasetError(
            f"{path}: no such dataset directory (create one with `gristmill prepare`)"
        )
    if (path / INCOMPLETE).exists():
        raise DatasetError(
            f"{path}: this dataset is incomplete (prepare was interrupted or failed); "
            "run the same `gristmill prepare` command again"
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no {MANIFEST}; this is not a gristmill dataset") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path / MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path / MANIFEST}: not a gristmill dataset manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format version {version} is newer than this gristmill reads "
            f"({FORMAT_VERSION}); upgrade gristmill"
        )
    return manifest
