"""A dataset's files checked against their manifest entry before their bytes are used:
:func:`check_open_file` is what a shard format's reader calls on each file it opens.

Every file is checked against the manifest's SHA-256 before gristmill serves or exports its bytes,
and hashed once per machine: a file found intact gets a stamp, a line in a log of the dataset's
in gristmill's cache folder, keyed by what ``stat`` tells of the file (device, inode, size,
modification and change times) and the hash it was found to have, so a later open (another
rank, a DataLoader worker, the next run) reads the log instead of hashing.

Any change made through the filesystem moves the file's change time, which no user can set back,
so it misses its stamp and is hashed again. What changes no ``stat`` field (a disk's bit rot, a
write to the device beneath the filesystem) is ``gristmill verify``'s to find: it always hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gristmill.errors import DatasetError
from gristmill.plugin.files import sha256_of

try:
    import fcntl
except ImportError:  # Windows: no lock, processes may hash the same file at once
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gristmill")

SETTLED_NS = 2_000_000_000  # a file changed more recently than this is hashed every time
STAMP = re.compile(r"[0-9a-f]{64}")

_checked: set[str] = set()  # the stamps this process found or wrote: no second lookup
CACHE_VARIABLES = ("GRISTMILL_CACHE_DIR", "XDG_CACHE_HOME", "HOME")  # what cache_dir() reads
_logs: dict[tuple[str | None, ...], _Stamps | None] = {}  # by dataset; None: cannot be written
_lock = threading.Lock()


def cache_dir() -> Path:
    """gristmill's cache folder: ``GRISTMILL_CACHE_DIR``, else ``$XDG_CACHE_HOME/gristmill``,
    else ``~/.cache/gristmill``."""
    chosen = os.environ.get("GRISTMILL_CACHE_DIR")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gristmill"


def check_open_file(
    fd: int, entry: Mapping[str, Any], *, dataset: Path, info: os.stat_result | None = None
) -> None:
    """Raise :class:`~gristmill.errors.DatasetError` unless the open file ``fd`` (``info``: its
    ``fstat``, when the caller has it) has the size and SHA-256 of the manifest ``entry``.

    A stamp says the file was found intact before; without one the file is hashed, under an
    exclusive lock on it, so that processes opening the dataset together wait for the first
    one's stamp rather than all hash the same file.
    """
    info = os.fstat(fd) if info is None else info
    if info.st_size != entry["bytes"]:
        raise _damaged(
            entry, dataset, f"{info.st_size} bytes, but the manifest says {entry['bytes']}"
        )
    key = _key(info, entry["sha256"])
    if key in _checked:
        return
    # A file changed this recently may change again within the same tick of the filesystem's
    # clock, keeping every stat field: it is checked, but stamped only once it is older.
    settled = time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > SETTLED_NS
    stamps = _stamps(dataset) if settled else None
    if stamps is None or not stamps.has(key):
        with _locked(fd):
            if stamps is None or not stamps.has(key):  # or stamped by whoever held the lock
                _hash(fd, info, entry, dataset)
                if stamps is not None:
                    stamps.add(key)
    if settled:
        _checked.add(key)


def _hash(fd: int, info: os.stat_result, entry: Mapping[str, Any], dataset: Path) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        found = sha256_of(f)[0]
    os.lseek(fd, 0, os.SEEK_SET)  # the caller reads the file from its start
    if _identity(os.fstat(fd)) != _identity(info):
        raise DatasetError(
            "the file changed while it was being checked (written in place?); prepare the "
            "dataset again",
            where=str(dataset / entry["path"]),
        )
    if found != entry["sha256"]:
        raise _damaged(
            entry,
            dataset,
            f"SHA-256 {found[:16]}…, but the manifest says {entry['sha256'][:16]}… "
            "(the content changed since prepare)",
        )


def _damaged(entry: Mapping[str, Any], dataset: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"{problem}; run `gristmill verify {dataset}` to list every damaged file, then prepare "
        "the dataset again",
        where=str(dataset / entry["path"]),
    )


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _key(info: os.stat_result, sha256: str) -> str:
    """The stamp's name: the file as ``stat`` sees it, and the hash it must have."""
    fields = ":".join(str(field) for field in _identity(info))
    return hashlib.sha256(f"{fields}:{sha256}".encode()).hexdigest()


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    """An exclusive ``flock`` on ``fd`` while the block runs, where the filesystem gives one
    (some network filesystems refuse it on a file opened read-only: then no lock)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        locked = fcntl is not None
    except OSError:
        locked = False
    try:
        yield
    finally:
        if locked:  # explicitly: a mapping of the file keeps the descriptor's lock alive
            fcntl.flock(fd, fcntl.LOCK_UN)


def _stamps(dataset: Path) -> _Stamps | None:
    """The stamps of the dataset at ``dataset``: one log a dataset directory, in the cache."""
    # Strings, not paths: looked up for every file a reader opens.
    key = (*(os.environ.get(name) for name in CACHE_VARIABLES), os.fspath(dataset))
    with _lock:
        if key not in _logs:
            name = hashlib.sha256(os.fsencode(os.path.realpath(dataset))).hexdigest()[:32]
            _logs[key] = _Stamps.open(cache_dir() / "checked" / f"{name}.log")
        return _logs[key]


class _Stamps:
    """A log of stamps, one a line, appended to by every process that hashes a file of the
    dataset. Lines from writers that raced on a filesystem without atomic appends may be torn:
    a line that is not a whole stamp is no stamp, and its file is hashed again."""

    def __init__(self, fd: int):
        self._fd = fd
        self._keys: set[str] = set()
        self._read = 0  # bytes of the log read so far
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> _Stamps | None:
        """The log at ``path``, created if needed; ``None`` (said once) where it cannot be."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return cls(os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as exc:
            log.warning(
                f"{path.parent}: cannot record which dataset files were checked "
                f"({exc.strerror}); every process hashes the shards it reads. Set "
                "GRISTMILL_CACHE_DIR to a writable folder"
            )
            return None

    def has(self, key: str) -> bool:
        """Whether ``key`` is stamped, by this process or, since it last looked, another."""
        with self._lock:
            if key not in self._keys:
                self._read_new()
            return key in self._keys

    def add(self, key: str) -> None:
        # A line of its own even after a torn one. A write that fails (a full disk) leaves the
        # file to be hashed again by the next process.
        with self._lock, contextlib.suppress(OSError):
            os.write(self._fd, f"\n{key}\n".encode())
            self._keys.add(key)

    def _read_new(self) -> None:
        size = os.fstat(self._fd).st_size
        if size <= self._read:
            return
        data = _read_at(self._fd, size - self._read, self._read)
        whole = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self._read += len(whole)
        self._keys.update(k for k in whole.decode("ascii", "replace").split() if STAMP.fullmatch(k))


def _read_at(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes of ``fd`` from ``offset``: ``pread``, which leaves the offset that forked
    processes share alone; where there is none (Windows, where nothing forks), seek and read."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)
