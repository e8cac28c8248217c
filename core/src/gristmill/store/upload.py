"""``prepare`` to a URL (``s3://``, ``gs://``, any fsspec filesystem that writes): the dataset
is prepared in a scratch directory in gristmill's cache folder, then uploaded file by file, the
manifest last, so that a reader, who starts from the manifest, never sees half a dataset.

The scratch directory is named after the URL and the endpoint, so that a run interrupted while
it prepares or uploads resumes where it stopped: the prepare through its own claim
(:mod:`gristmill.store.claim`), the upload through a journal of the files already sent (path,
size, SHA-256). A file whose journal entry is not the one the local manifest lists is sent again.
Once the manifest has landed the scratch directory goes, unless ``keep_scratch``.

A dataset already at the URL is treated as one in a local output directory: the same
fingerprint is up to date (nothing is sent), another is refused unless ``overwrite``, which
first removes the old manifest (readers are refused, never served a mix), then, once the new
manifest has landed, the old dataset's files that the new one does not list.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gristmill.errors import DatasetError, first_line
from gristmill.layout import MANIFEST, reject_file
from gristmill.options import PrepareOptions
from gristmill.plugin.files import sha256_of
from gristmill.plugin.integrity import cache_dir
from gristmill.plugin.remote import mirror
from gristmill.plugin.remote.urls import (
    endpoint,
    filesystem,
    is_denied,
    is_unreachable,
    redacted,
    scheme,
)
from gristmill.store.claim import dataset_manifest
from gristmill.store.manifest import listed_files

try:
    import fcntl
except ImportError:  # Windows: no lock; two uploads of one URL at once are not refused
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gristmill")

DATASET = "dataset"  # the scratch directory's prepared dataset
JOURNAL = "journal.jsonl"  # which upload (first line), then one line per file sent
FOUND = "found"  # the manifest found at the URL, read as a dataset directory
THREADS = 8  # files sent at once
READ_ONLY = ("http", "https")  # fsspec reads these; nothing writes to them
T = TypeVar("T")


def scratch_dir(url: str, options: PrepareOptions) -> Path:
    """The scratch directory of an upload to ``url``: ``upload/`` in gristmill's cache folder,
    named by a hash of the URL (less any password) and the endpoint (two servers' buckets of
    one name differ)."""
    name = f"{redacted(url.rstrip('/'))}\n{endpoint(options.storage_options)}"
    return cache_dir() / "upload" / hashlib.sha256(name.encode()).hexdigest()[:32]


class Upload:
    """An upload of a dataset to ``url``: ``dataset`` is the scratch directory to prepare into.
    Made before the prepare starts: it locks the scratch directory and reads the manifest at
    the URL (``existing``), so that an unreachable server or a missing library fails first."""

    def __init__(self, url: str, options: PrepareOptions):
        if scheme(url) in READ_ONLY:
            raise DatasetError(
                "gristmill reads datasets from http(s):// URLs but cannot upload to them; "
                "prepare to a bucket (s3://, gs://…) or a local directory",
                where=url,
            )
        self.url = redacted(url.rstrip("/"))  # what messages, logs and the journal name
        self.options = options
        self.scratch = scratch_dir(url, options)
        self.dataset = self.scratch / DATASET
        self.fs, base = filesystem(url.rstrip("/"), options.storage_options)
        self.base = base.rstrip("/")
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = _lock(self.scratch / "upload.lock", self.url)
        try:
            self.existing: bytes | None = self._retrying(MANIFEST, self._read_manifest)
        except BaseException:
            self.release()
            raise

    def run(self, config_fp: str, write: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Prepare (``write`` into :attr:`dataset`) and upload, or find the URL up to date;
        the manifest either way."""
        journal = Journal(
            self.scratch / JOURNAL, {"url": self.url, "config_fingerprint": config_fp}
        )
        found = self._found()
        if found is not None:
            manifest, damaged = found
            same = manifest.get("config_fingerprint") == config_fp
            if same and not damaged and not self.options.overwrite:
                log.info(
                    f"{self.url}: already prepared from these sources and settings; nothing to do"
                )
                if journal.matches or not journal.path.exists():  # not another run's scratch
                    self._clean_up(journal)
                return manifest
            if not same and not self.options.overwrite:
                raise DatasetError(
                    f"{self.url} already holds a dataset prepared from other sources or "
                    "settings; pass --overwrite to replace it, or choose another -o"
                )
        self._check_scratch(journal)
        if found is None and not (journal.matches or self.options.overwrite) and self._others():
            raise DatasetError(
                f"{self.url} holds objects but no gristmill dataset; choose a new prefix, or "
                "pass --overwrite to write the dataset among them (none is removed)"
            )
        if not journal.matches:
            journal.start()
        manifest = write()
        self._send(manifest, journal, found[0] if found else None)
        self._clean_up(journal)
        return manifest

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _check_scratch(self, journal: Journal) -> None:
        """Refuse the scratch directory of another upload to the URL (unfinished, or kept), or
        with ``overwrite`` remove its prepared dataset (the journal is started afresh)."""
        if journal.matches:
            return
        if journal.path.exists() or self.dataset.exists():
            if not self.options.overwrite:
                raise DatasetError(
                    f"{self.url}: {self.scratch} holds a prepare or upload of other sources or "
                    "settings to this URL (unfinished, or kept); run that command again to "
                    "finish it, or pass --overwrite to start over"
                )
            shutil.rmtree(self.dataset, ignore_errors=True)

    def _found(self) -> tuple[dict[str, Any], bool] | None:
        """The manifest at the URL and whether it is damaged, read as the local prepare reads
        one; ``None`` where there is none. One that is not a gristmill manifest is refused."""
        if self.existing is None:
            return None
        folder = self.scratch / FOUND
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / MANIFEST).write_bytes(self.existing)
        found = dataset_manifest(folder)
        if found is None:
            raise DatasetError(
                f"{self.url}/{MANIFEST} is not a gristmill dataset's manifest; choose another -o"
            )
        return found

    def _others(self) -> bool:
        """Whether the URL's prefix holds any object (one listing request)."""

        def listing() -> list[Any]:
            try:
                return list(self.fs.ls(self.base, detail=False))
            except FileNotFoundError:
                return []

        return bool(self._retrying("", listing))

    def _read_manifest(self) -> bytes | None:
        path = f"{self.base}/{MANIFEST}"
        self.fs.invalidate_cache(path)
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def _send(
        self, manifest: dict[str, Any], journal: Journal, replaced: dict[str, Any] | None
    ) -> None:
        """Every file the manifest lists that the journal does not say was sent as it is, then
        the manifest; the old dataset's manifest first goes, and its other files last."""
        entries = list(listed_files(manifest))
        pending = [e for e in entries if journal.sent.get(e["path"]) != (e["bytes"], e["sha256"])]
        if replaced is not None:
            journal.replacing(sorted(entry["path"] for entry in listed_files(replaced)))
            self._retrying(MANIFEST, lambda: self._remove(MANIFEST))
        from gristmill.store.prepare import progress_bar

        started = time.monotonic()
        total = sum(entry["bytes"] for entry in pending)
        bar = progress_bar(self.options.progress, "upload", unit="B", total=total)
        with bar:
            if len(pending) < len(entries):
                bar.set_postfix_str(f"{len(entries) - len(pending)} of {len(entries)} sent before")
            self._send_all(pending, journal, bar.update)
        self._retrying(MANIFEST, lambda: self._put(self.dataset / MANIFEST, MANIFEST))
        stale = set(journal.replaced) - {entry["path"] for entry in entries}
        for name in sorted(stale):
            self._retrying(name, functools.partial(self._remove, name))
        log.info(
            f"{self.url}: uploaded {len(pending) + 1:,} file(s), {_mib(total)} in "
            f"{time.monotonic() - started:.1f} s"
            + (
                f"; {len(entries) - len(pending):,} sent before"
                if len(pending) < len(entries)
                else ""
            )
            + (f"; removed {len(stale):,} file(s) of the dataset it replaced" if stale else "")
        )

    def _send_all(
        self, pending: list[dict[str, Any]], journal: Journal, progress: Callable[[int], None]
    ) -> None:
        """Send the files of ``pending`` in threads; the first failure stops those not started."""
        stop = threading.Event()

        def send(entry: dict[str, Any]) -> None:
            if stop.is_set():
                return
            try:
                self._send_one(entry)
            except BaseException:
                stop.set()
                raise
            journal.add(entry["path"], entry["bytes"], entry["sha256"])
            progress(entry["bytes"])

        pool = ThreadPoolExecutor(THREADS, thread_name_prefix="gristmill-upload")
        try:
            for _ in pool.map(send, pending):
                pass
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _send_one(self, entry: dict[str, Any]) -> None:
        """Send one file, once it is known to be what the manifest lists."""
        name = entry["path"]
        local = self.dataset / name
        with open(local, "rb", buffering=0) as f:
            sha256, size = sha256_of(f)
        if (size, sha256) != (entry["bytes"], entry["sha256"]):
            raise DatasetError(
                f"{size:,} bytes of SHA-256 {sha256[:16]}…, but the manifest lists "
                f"{entry['bytes']:,} of {entry['sha256'][:16]}…: the scratch copy changed since "
                "prepare wrote it; pass --overwrite to prepare it again",
                where=str(local),
            )
        self._retrying(name, lambda: self._put(local, name))

    def _put(self, local: Path, name: str) -> None:
        try:
            self.fs.put_file(str(local), f"{self.base}/{name}")
        except NotImplementedError:
            raise DatasetError(
                f"the {scheme(self.url)}:// filesystem cannot write; prepare to a bucket "
                "(s3://, gs://…) or a local directory",
                where=self.url,
            ) from None

    def _remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.base}/{name}")

    def _retrying(self, name: str, attempt: Callable[[], T]) -> T:
        """``attempt()`` with the read side's retries: a 403 is refused at once, naming the
        object (the URL where ``name`` is empty), and so is a missing bucket or path."""
        where = f"{self.url}/{name}" if name else self.url

        def refuse(error: BaseException) -> DatasetError | None:
            if is_denied(error):
                return mirror.denied(where, error, "read and write this prefix")
            return _failed(where, error) if isinstance(error, FileNotFoundError) else None

        return mirror.retrying(where, attempt, refuse=refuse, give_up=lambda e: _failed(where, e))

    def _clean_up(self, journal: Journal) -> None:
        """The scratch directory goes once the URL holds the dataset, unless it is to be kept;
        a file of rejected records stays (it is not part of the dataset)."""
        if self.options.keep_scratch:
            if self.dataset.exists():
                log.info(f"{self.url}: the local copy stays in {self.dataset}")
            return
        shutil.rmtree(self.dataset, ignore_errors=True)
        shutil.rmtree(self.scratch / FOUND, ignore_errors=True)
        journal.path.unlink(missing_ok=True)
        if reject_file(self.dataset).exists():
            log.info(f"{self.url}: the rejected records stay in {reject_file(self.dataset)}")


def _failed(where: str, error: BaseException) -> DatasetError:
    tries = len(mirror.RETRY_DELAYS) + 1
    if isinstance(error, FileNotFoundError):
        return DatasetError(
            f"not found ({first_line(error)}): no such bucket, or the path is not one",
            where=where,
        )
    if is_unreachable(error):
        return DatasetError(
            f"cannot reach the server after {tries} tries ({first_line(error)}); check the "
            "network (offline?) and the endpoint; the same command resumes the upload",
            where=where,
        )
    return DatasetError(
        f"failed {tries} times: {first_line(error)}; the same command resumes the upload",
        where=where,
    )


class Journal:
    """The upload's journal (JSON lines): the first line says which upload (URL and config
    fingerprint), each other line a file sent (``path``, ``bytes``, ``sha256``) or the files
    of the dataset being replaced (``replacing``). A torn last line is ignored."""

    def __init__(self, path: Path, head: dict[str, str]):
        self.path = path
        self.head = head
        self.sent: dict[str, tuple[int, str]] = {}
        self.replaced: list[str] = []
        self._lock = threading.Lock()
        lines = _lines(path)
        self.matches = bool(lines) and lines[0] == head
        for line in lines[1:] if self.matches else ():
            if "replacing" in line:
                self.replaced = list(line["replacing"])
            elif {"path", "bytes", "sha256"} <= line.keys():
                self.sent[line["path"]] = (line["bytes"], line["sha256"])

    def start(self) -> None:
        self.path.write_text(json.dumps(self.head) + "\n", encoding="utf-8")
        self.sent, self.replaced, self.matches = {}, [], True

    def add(self, name: str, size: int, sha256: str) -> None:
        self._append({"path": name, "bytes": size, "sha256": sha256})
        self.sent[name] = (size, sha256)

    def replacing(self, names: list[str]) -> None:
        self._append({"replacing": names})
        self.replaced = names

    def _append(self, line: dict[str, Any]) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _lines(path: Path) -> list[dict[str, Any]]:
    """The journal's lines that parse as JSON objects, up to the first that does not."""
    lines: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                break
            if not isinstance(line, dict):
                break
            lines.append(line)
    return lines


def _lock(path: Path, url: str) -> int:
    """An exclusive lock on ``path``, held while the process uploads to ``url``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatasetError(
                "another gristmill prepare on this machine is writing this URL; wait for it "
                "to finish",
                where=url,
            ) from None
    return fd


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"
