"""Durable writes: a file is either its old content or all of the new, never part.

Plugins that write files (shard formats, exporters) use these, as the core does.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


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


def write_atomic(
    path: Path,
    data: bytes | memoryview | Callable[[BinaryIO], object],
    *,
    sync_directory_too: bool = True,
) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new, never part.
    ``data`` may be a function that writes to the open file (a large ``np.savez``, unbuffered).

    With ``sync_directory_too=False`` the rename is durable only after a later
    :func:`sync_directory` of the parent: one sync for many files.
    """
    with temporary_for(path) as tmp:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            if durable():
                os.fsync(f.fileno())
        os.replace(tmp, path)
    if sync_directory_too:
        sync_directory(path.parent)


@contextlib.contextmanager
def temporary_for(path: Path) -> Iterator[Path]:
    """The temporary name ``NAME.tmp-PID`` to write ``path`` under before renaming it into place.

    If the writing fails, the temporary file goes, and an ``OSError`` that names no file (a
    write past the end of the disk) is raised again naming ``path``.
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def remove_stale_temporaries(directory: Path, name: str | None = None) -> None:
    """Remove the temporary files in ``directory`` (those of the file ``name``, or any) whose
    writer is gone: killed before it could."""
    of = "*" if name is None else glob.escape(name)
    for tmp in directory.glob(f"{of}.tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process: keep its files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
