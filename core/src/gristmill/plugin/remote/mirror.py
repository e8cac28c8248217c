"""A remote dataset's mirror: a local folder that holds its files fetched so far, read as a
dataset directory.

Opening fetches ``manifest.json`` afresh (once per open), and the small files every open reads:
the tokenizer's, the offsets index and the metadata columns. A shard's file is fetched when it
is first read, once per node: processes that share the cache folder take a lock on the file
while one of them downloads it, and the others find it there. A download goes to a temporary
file while it is hashed, and is renamed into place only with the size and SHA-256 the manifest
gives; a bad or broken one is retried, then refused with an error naming the URL and the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gristmill.errors import DatasetError, GristmillError, first_line
from gristmill.plugin.atomic import remove_stale_temporaries, temporary_for, write_atomic
from gristmill.plugin.integrity import cache_dir
from gristmill.plugin.remote.evict import EvictionPolicy, LeastRecentlyUsed
from gristmill.plugin.remote.urls import (
    endpoint,
    filesystem,
    is_denied,
    is_missing,
    is_unreachable,
    redacted,
    scheme,
)

try:
    import fcntl
except ImportError:  # Windows: no lock, processes may download the same file at once
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gristmill")

MANIFEST = "manifest.json"  # gristmill.layout's: the kit may not import it
STATE = ".gristmill-remote"  # the mirror's own files: locks, downloads under way, its origin
CACHE_LIMIT_VARIABLE = "GRISTMILL_REMOTE_CACHE_LIMIT"  # the default cache_limit, in bytes
CHUNK = 8 << 20  # bytes read from the server, hashed and written at a time
# Seconds to wait before each retry of a download that failed or did not match the manifest.
RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0, 8.0)
STREAMED = ("http", "https")  # read in one request (block_size=0): no range requests needed

_mirrors: dict[str, Mirror] = {}  # by their folder's real path: what the shard reader finds
_registry = threading.Lock()
# The lock files' descriptors open now: a process forked meanwhile (a DataLoader worker) closes
# its copies at once, else it would hold their locks for good (a flock belongs to the open
# file, which the copy keeps open after this process closes its own). A fork waits for
# ``_guard``, so that it never falls between a descriptor's closing and its leaving the set.
_held: set[int] = set()
_guard = threading.Lock()
T = TypeVar("T")


class Mismatch(Exception):
    """A download whose size or SHA-256 is not the manifest's."""


def default_cache_limit() -> int | None:
    """``GRISTMILL_REMOTE_CACHE_LIMIT`` (bytes), ``None`` (no limit) where it is not set."""
    text = os.environ.get(CACHE_LIMIT_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise DatasetError(f"{CACHE_LIMIT_VARIABLE}={text!r}: expected a number of bytes")
    return int(text)


def open_mirror(
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    cache_limit: int | None = None,
) -> Mirror:
    """The mirror of the dataset at ``url``, its manifest fetched afresh (see :class:`Mirror`)."""
    mirror = Mirror(url, storage_options=storage_options, cache_limit=cache_limit)
    mirror.refresh()
    with _registry:
        _mirrors[os.path.realpath(mirror.root)] = mirror
    return mirror


def mirror_of(root: str | os.PathLike[str]) -> Mirror | None:
    """The mirror whose folder is ``root``, opened in this process; ``None`` for any other
    folder (a dataset on a local filesystem)."""
    if not _mirrors:
        return None
    return _mirrors.get(os.path.realpath(root))


def local_file(root: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    """The local path of the file of the manifest ``entry`` of the dataset at ``root``: fetched
    first when ``root`` is a mirror and the file is not there yet."""
    mirror = mirror_of(root)
    if mirror is None:
        return Path(root) / str(entry["path"])
    return mirror.fetch(entry)


class Mirror:
    """The local copy of the dataset at ``url``: ``root`` is a dataset directory, in gristmill's
    cache folder (``remote/`` and a hash of the URL and the endpoint), holding the files fetched
    so far.

    ``cache_limit`` (bytes; default ``GRISTMILL_REMOTE_CACHE_LIMIT``, else none) bounds the
    dataset's files in the mirror: before a file lands that would pass it, shard files are
    dropped, the one ``policy`` picks first (:mod:`gristmill.plugin.remote.evict`: least
    recently used unless a loader hands over when each file is read next). The manifest, the
    tokenizer's files, the offsets index, the metadata and a file being downloaded are never
    dropped, nor anything the manifest does not list (it has no remote copy), nor a file a
    reader of the node has pinned (:meth:`pin`: open or mapped, so that the files' disk space,
    mapped ones included, stays counted).
    ``storage_options`` go to fsspec as they are (credentials among them are never logged).
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        cache_limit: int | None = None,
    ):
        self._url = url.rstrip("/")  # as given, credentials included: for fsspec alone
        self.url = redacted(self._url)  # what messages, logs and the cache folder name
        self.storage_options = dict(storage_options or {})
        self.cache_limit = default_cache_limit() if cache_limit is None else cache_limit
        name = f"{self.url}\n{endpoint(self.storage_options)}"
        self.root = cache_dir() / "remote" / hashlib.sha256(name.encode()).hexdigest()[:32]
        self.state = self.root / STATE
        self.policy: EvictionPolicy = LeastRecentlyUsed()
        self.fetched: list[str] = []  # the files this process downloaded, in order
        self._listed: dict[str, Mapping[str, Any]] = {}  # the manifest's files, by path
        self._pinned: set[str] = set()  # the files no eviction drops
        self._last_used: dict[str, float] = {}
        # The dataset's files in the folder, (size, time landed) by path, as this process last
        # counted them, and the stamp the folder had then: every process that lands or drops
        # a file writes a new stamp (under the mirror's lock), so that a landing recounts only
        # after another process changed the folder.
        self._present: dict[str, tuple[int, float]] | None = None
        self._stamp = ""
        self._failed: dict[str, Exception] = {}  # fetches ahead that failed, for the read
        self._fs: tuple[int, Any, str] | None = None  # (pid, filesystem, base path)
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process makes its own filesystem (fsspec's are bound to a process).
        return {**vars(self), "_fs": None, "_present": None, "_failed": {}}

    def __repr__(self) -> str:
        return f"Mirror({self.url!r}, root={str(self.root)!r})"

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the dataset's path on it, made once per process."""
        if self._fs is None or self._fs[0] != os.getpid():
            fs, path = filesystem(self._url, self.storage_options)
            self._fs = (os.getpid(), fs, path.rstrip("/"))
        return self._fs[1], self._fs[2]

    def refresh(self) -> None:
        """Fetch the manifest afresh and the small files an open reads. A manifest other than
        the one held replaces it (atomically), and the files the new one does not list as they
        are go: a reader that opened the old one is refused when it reads on."""
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        (self.state / "origin").write_text(self.url + "\n", encoding="utf-8")
        data = self._retrying(MANIFEST, lambda: self._read(MANIFEST))
        with self._locked(self.state / "mirror.lock"):
            remove_stale_temporaries(self.state / "tmp")
            path = self.root / MANIFEST
            old = path.read_bytes() if path.exists() else None
            if old != data:  # the same manifest stays the same file: open readers read on
                write_atomic(path, data)
                self._drop_stale(listing(old), listing(data))
                self._changed()
            self._present = None  # counted afresh at the next landing
        self._listed = listing(data)
        self._pinned = pinned(data)
        for name in sorted(self._pinned):
            self.fetch(self._listed[name])

    def fetch(self, entry: Mapping[str, Any]) -> Path:
        """The local path of the file of the manifest ``entry``, downloaded first (once per
        node) when it is not in the mirror."""
        path = self._fetch(entry, None)
        assert path is not None  # only a fetch ahead lands nothing
        return path

    def open(self, entry: Mapping[str, Any]) -> int:
        """A descriptor of the file of the manifest ``entry``, fetched (again) where it is not
        in the mirror: the file is pinned meanwhile (:meth:`pin`), so that no eviction, by this
        process or another, drops it between its landing and its opening."""
        for _ in range(len(RETRY_DELAYS) + 2):
            pin = self.pin(entry, held=True)
            try:
                path = self.fetch(entry)
                with contextlib.suppress(FileNotFoundError):  # no pins without flock: again
                    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            finally:
                if pin is not None:
                    _held_close(pin)
        raise DatasetError(
            f"{entry['path']}: dropped from the mirror each time it landed; raise cache_limit",
            where=self.url,
        )

    def pin(self, entry: Mapping[str, Any], *, held: bool = False) -> int | None:
        """Keep the file of ``entry`` from being dropped, by any process of the node, until
        :meth:`unpin` (a shared ``flock`` on its pin file, which an eviction must take
        exclusively): what a reader holds while it has the file open or mapped. ``None``
        where there is no ``flock`` (nothing pinned). A process forked meanwhile keeps its
        copy of the pin (it is the reader's, whose copy the fork has too); ``held``: it
        closes it at once instead (a pin for the caller alone, closed with ``_held_close``)."""
        if fcntl is None:
            return None
        path = self._pin_file(self._relative(entry["path"]))
        fd = _held_open(path) if held else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            if held:
                _held_close(fd)
            else:
                os.close(fd)
            raise
        return fd

    @staticmethod
    def unpin(pin: int | None) -> None:
        """Let the file pinned by :meth:`pin` be dropped again."""
        if pin is not None:
            os.close(pin)  # which releases the lock

    def room(self) -> int | None:
        """The bytes ``cache_limit`` leaves for shard files, once the files that always stay
        (the manifest and the small files every open reads) are counted; ``None``: no limit."""
        if self.cache_limit is None:
            return None
        kept = sum(int(self._listed[name]["bytes"]) for name in self._pinned)
        with contextlib.suppress(OSError):
            kept += os.stat(self.root / MANIFEST).st_size
        return self.cache_limit - kept

    def _pin_file(self, name: str) -> Path:
        folder = self.state / "pins"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{_digest(name)}.lock"

    def _claim(self, name: str) -> int | None:
        """An exclusive lock on the pin file of ``name``, taken without waiting: ``None``
        where a reader has the file pinned (it stays). ``-1`` where there is no ``flock``."""
        if fcntl is None:
            return -1
        fd = _held_open(self._pin_file(name))  # a fork closes it: else it would hold it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _held_close(fd)
            return None
        return fd

    def fetch_ahead(self, entry: Mapping[str, Any], next_use: int) -> bool:
        """Fetch the file of ``entry`` before it is read (a prefetch; ``next_use``: its next
        read's position, as the policy counts): it counts as no use, drops no file the policy
        says is needed sooner (``False`` where it would have to: nothing is downloaded), and
        a failure, raised here, is kept too and raised by the file's next :meth:`fetch` (the
        read that needs it)."""
        return self._fetch(entry, next_use) is not None

    def _fetch(self, entry: Mapping[str, Any], ahead: int | None) -> Path | None:
        name = self._relative(entry["path"])
        path = self.root / name
        if ahead is None:
            self.used(name)
            failed = self._failed.pop(name, None)
            if failed is not None and not _has_size(path, entry["bytes"]):
                raise failed
        if _has_size(path, entry["bytes"]):
            return path
        with self._locked(self.state / "locks" / f"{_digest(name)}.lock"):
            if _has_size(path, entry["bytes"]):  # landed by whoever held the lock
                return path
            if ahead is not None:
                with self._locked(self.state / "mirror.lock"):
                    if not self._make_room(name, entry["bytes"], ahead, dry=True):
                        return None
            if not self._land(name, entry, path, ahead):
                return None
        self.fetched.append(name)
        return path

    def _land(self, name: str, entry: Mapping[str, Any], path: Path, ahead: int | None) -> bool:
        """Download the file ``name`` and rename it into place at ``path`` once there is room
        (``False`` where a fetch ahead finds none: nothing lands)."""
        with temporary_for(self.state / "tmp" / _digest(name)) as tmp:
            try:
                self._retrying(name, lambda: self._download(name, entry, tmp))
            except Exception as error:
                if ahead is not None:
                    self._failed[name] = error
                raise
            with self._locked(self.state / "mirror.lock"):
                if not self._make_room(name, entry["bytes"], ahead):
                    return False
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
                if self._present is not None:
                    self._present[name] = (entry["bytes"], time.time())
                self._changed()
        return True

    def fetch_all(self) -> Path:
        """Every file the manifest lists, fetched where it is not in the mirror yet: the
        mirror's folder, a whole dataset (to ``gristmill verify`` or export; ``cache_limit``
        still applies, so a limit below the dataset's size leaves some out)."""
        for entry in self._listed.values():
            self.fetch(entry)
        return self.root

    def used(self, name: str) -> None:
        """Note that the file ``name`` (its path in the dataset) is read now: least recently
        used is dropped first where no oracle says when files are read next (and an oracle
        that follows the reads is told)."""
        self._last_used[name] = time.time()
        read = getattr(self.policy, "read", None)
        if read is not None:
            read(name)

    def _read(self, name: str) -> bytes:
        fs, base = self.filesystem()
        remote = f"{base}/{name}"
        fs.invalidate_cache(remote)  # fetched afresh: never a size or listing cached before
        return bytes(fs.cat_file(remote))  # one GET: no HEAD first, whose errors say less

    def _download(self, name: str, entry: Mapping[str, Any], tmp: Path) -> None:
        """Stream the file ``name`` into ``tmp``, hashing it: :class:`Mismatch` unless it has
        the size and SHA-256 of ``entry``."""
        fs, base = self.filesystem()
        digest, size = hashlib.sha256(), 0
        # The size the manifest gives spares a HEAD request; a longer object is cut there,
        # and found out by its hash.
        options = {**self._open_options(), "size": entry["bytes"]}
        with fs.open(f"{base}/{name}", "rb", **options) as src, open(tmp, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
        if size != entry["bytes"]:
            raise Mismatch(f"{size} bytes, but the manifest says {entry['bytes']}")
        if digest.hexdigest() != entry["sha256"]:
            raise Mismatch(
                f"SHA-256 {digest.hexdigest()[:16]}…, but the manifest says {entry['sha256'][:16]}…"
            )

    def _open_options(self) -> dict[str, Any]:
        return {"block_size": 0} if scheme(self.url) in STREAMED else {"block_size": CHUNK}

    def _retrying(self, name: str, attempt: Callable[[], T]) -> T:
        """``attempt()`` with :func:`retrying`: a 403 or 404 is refused at once."""
        where = f"{self.url}/{name}"

        def refuse(error: BaseException) -> DatasetError | None:
            if is_denied(error):
                return denied(where, error, "read this object")
            if is_missing(error):
                return DatasetError(
                    f"not found on the server ({first_line(error)}); no dataset at "
                    f"{self.url}, or it was removed or is still being uploaded",
                    where=where,
                )
            return None

        return retrying(where, attempt, refuse=refuse, give_up=lambda e: _failed(where, e))

    def _make_room(
        self, landing: str, size: int, ahead: int | None = None, *, dry: bool = False
    ) -> bool:
        """Drop shard files, the policy's choice first, until ``size`` more bytes stay within
        the limit (under the mirror's lock); a file a reader has pinned (open or mapped, in
        any process) stays. A fetch ahead (``ahead``: its next use) drops none that the
        policy says is needed sooner, nor any without an oracle: ``False`` where it would
        have to (nothing dropped). ``dry``: only say whether there is room."""
        if self.cache_limit is None:
            return True
        present = self._counted()
        total = sum(size for size, _ in present.values()) - present.get(landing, (0, 0))[0]
        keep = {MANIFEST, landing, *self._pinned}
        candidates = [n for n in present if n not in keep]
        last = {n: self._last_used.get(n, present[n][1]) for n in candidates}
        claims: dict[str, int] = {}  # the victims, their pin files held until they are gone
        try:
            while candidates and total + size > self.cache_limit:
                victim = self.policy.victim(candidates, last)
                candidates.remove(victim)
                if ahead is not None and not _later(self.policy, victim, ahead):
                    return False
                claim = self._claim(victim)
                if claim is not None:
                    claims[victim] = claim
                    total -= present[victim][0]
            if ahead is not None and total + size > self.cache_limit:
                return False
            if not dry:
                self._drop(claims, present)
        finally:
            for claim in claims.values():
                if claim >= 0:
                    _held_close(claim)
        if not dry and total + size > self.cache_limit and not self._warned:
            self._warned = True
            log.warning(
                f"{self.url}: cache_limit {self.cache_limit:,} bytes is less than the files "
                f"that must stay in the mirror ({total + size:,} bytes: the file read now, "
                "the manifest's small files, the files readers have open or mapped); the "
                "mirror holds more than the limit"
            )
        return True

    def _drop(self, victims: Mapping[str, int], present: dict[str, tuple[int, float]]) -> None:
        for victim in victims:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.root / victim)
            del present[victim]
        if victims:
            self._changed()

    def _counted(self) -> dict[str, tuple[int, float]]:
        """The dataset's files in the folder, (size, time landed) by path (under the mirror's
        lock): as counted before, unless another process changed the folder since."""
        try:
            stamp = (self.state / "stamp").read_text(encoding="utf-8")
        except OSError:
            stamp = ""
        if self._present is None or stamp != self._stamp:
            present = {}
            for name in (MANIFEST, *self._listed):
                with contextlib.suppress(OSError):
                    info = os.lstat(self.root / name)
                    present[name] = (info.st_size, info.st_mtime)
            self._present, self._stamp = present, stamp
        return self._present

    def _changed(self) -> None:
        """Say that this process landed or dropped files (under the mirror's lock): the others
        count the folder again at their next landing."""
        self._stamp = uuid.uuid4().hex
        with contextlib.suppress(OSError):
            (self.state / "stamp").write_text(self._stamp, encoding="utf-8")

    def _drop_stale(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Remove the files of the old manifest that the new one does not list as they are."""
        for name, entry in old.items():
            if _same(entry, new.get(name)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(self.root / self._relative(name))

    def _relative(self, name: str) -> str:
        """``name``, a path the manifest lists, once it is known to stay inside the mirror."""
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or {"", ".", ".."} & set(parts):
            raise DatasetError(f"manifest path {name!r} leaves the dataset", where=self.url)
        if parts[0] == STATE:
            raise DatasetError(f"manifest path {name!r} is the mirror's own", where=self.url)
        return name

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """An exclusive ``flock`` on the lock file ``path`` while the block runs (processes,
        and threads, of this node wait for each other)."""
        fd = _held_open(path)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            _held_close(fd)  # which releases the lock


def _held_open(path: Path) -> int:
    """A descriptor of the lock file ``path`` that a forked process closes (see ``_held``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _guard:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        _held.add(fd)
    return fd


def _held_close(fd: int) -> None:
    with _guard:
        _held.discard(fd)
        os.close(fd)


def _close_held() -> None:
    """In a forked child: close the copies of the lock files' descriptors (see ``_held``)."""
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()
    _guard.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_guard.acquire, after_in_parent=_guard.release, after_in_child=_close_held
    )


def _later(policy: EvictionPolicy, victim: str, when: int) -> bool:
    """Whether ``policy`` says ``victim`` is needed later than ``when`` (or never again)."""
    next_use = getattr(policy, "next_use", None)
    if next_use is None:
        return False
    position = next_use(victim)
    return position is None or position > when


def retrying(
    where: str,
    attempt: Callable[[], T],
    *,
    refuse: Callable[[BaseException], DatasetError | None],
    give_up: Callable[[BaseException], DatasetError],
) -> T:
    """``attempt()``, tried again after each of ``RETRY_DELAYS`` while it fails in a way a
    retry may mend: ``refuse(error)`` is the error to raise at once instead (``None``: a retry
    may mend it), ``give_up(error)`` the one once no try is left. gristmill's own errors are
    raised as they are."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return attempt()
        except GristmillError:
            raise
        except Exception as error:
            refused = refuse(error)
            if refused is None and delay is None:
                refused = give_up(error)
            if refused is not None:
                raise refused from None
            log.warning(f"{where}: {first_line(error)}; retrying in {delay:g} s")
            time.sleep(delay or 0)
    raise AssertionError("unreachable")  # the loop returns or raises


def denied(where: str, error: BaseException, may: str) -> DatasetError:
    """A 401 or 403 at ``where``: what to check, ``may`` what the credentials must allow."""
    return DatasetError(
        f"access denied ({first_line(error)}); check the credentials (the filesystem's own: "
        f"environment variables, config files, or storage_options) and that they may {may}",
        where=where,
    )


def _failed(where: str, error: BaseException) -> DatasetError:
    tries = len(RETRY_DELAYS) + 1
    if isinstance(error, Mismatch):
        return DatasetError(
            f"downloaded {tries} times, never as the manifest lists it ({error}): the object "
            "on the server is damaged or was replaced; nothing of it was served. Check it, or "
            "prepare and upload the dataset again",
            where=where,
        )
    if is_unreachable(error):
        return DatasetError(
            f"cannot reach the server after {tries} tries ({first_line(error)}); check the "
            "network (offline?) and the endpoint",
            where=where,
        )
    return DatasetError(f"failed {tries} times: {first_line(error)}", where=where)


def listing(data: bytes | None) -> dict[str, Mapping[str, Any]]:
    """Every file entry a manifest's bytes list, by path (what of it can be read: a manifest
    that is not well formed is refused by ``read_manifest`` with the reason)."""
    try:
        manifest = json.loads(data) if data is not None else {}
    except ValueError:
        return {}
    return {entry["path"]: entry for entry in _entries(manifest) if _is_entry(entry)}


def pinned(data: bytes) -> set[str]:
    """The paths of the files every open reads, fetched at open and never dropped: the
    tokenizer's, the offsets index and the metadata columns."""
    manifest = _object(json.loads(data))
    tokenizer = _object(manifest.get("tokenizer"))
    small = [*_list(tokenizer.get("files"))]
    small += _object(manifest.get("index")).values()
    for column in _object(manifest.get("metadata")).values():
        small += [_object(column).get("strings"), _object(column).get("offsets")]
    for split in _object(manifest.get("splits")).values():
        small += _object(_object(split).get("metadata")).values()
    return {entry["path"] for entry in small if _is_entry(entry)}


def _entries(manifest: Any) -> Iterator[Any]:
    yield from _list(_object(_object(manifest).get("tokenizer")).get("files"))
    for split in _object(_object(manifest).get("splits")).values():
        for shard in _list(_object(split).get("shards")):
            yield from _object(shard).values()
        yield from _object(_object(split).get("metadata")).values()
    for column in _object(_object(manifest).get("metadata")).values():
        yield from (_object(column).get("strings"), _object(column).get("offsets"))
    for entry in _object(_object(manifest).get("index")).values():
        yield from (entry, _object(entry).get("loss"))  # the loss index: read at a cold open


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("bytes"), int)
        and isinstance(entry.get("sha256"), str)
    )


def _same(entry: Any, other: Any) -> bool:
    return other is not None and all(entry.get(k) == other.get(k) for k in ("bytes", "sha256"))


def _has_size(path: Path, size: int) -> bool:
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]
