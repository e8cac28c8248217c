"""Claiming an output directory: start fresh, resume an unfinished prepare, or refuse.

While ``prepare`` writes, the directory holds a marker (``.gristmill-incomplete``) with the
fingerprint of the config and input, locked for as long as the process lives. A later run with
the same fingerprint resumes: it keeps the tasks whose record and files are all there and removes
everything else. A different fingerprint is refused (``--overwrite`` starts over), so outputs of
two configs never mix, unless the unfinished run stopped on an error (bad input): its config or
input had to change, and the new run starts over. A live lock is refused, so two runs never
interleave.

Starting over removes only what gristmill wrote: the manifest, the shards (the files named after
their task in the splits' directories), the tokenizer, the documents' metadata, the tasks'
records, the cached plans, the marker and temporary files. A directory that also holds
anything else is refused, naming those files, and nothing is removed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gristmill.errors import DatasetError
from gristmill.ingest.splits import SPLITS  # those prepare may write
from gristmill.layout import (
    INCOMPLETE,
    INDEX_DIR,
    MANIFEST,
    METADATA_DIR,
    PLANS_DIR,
    TASKS_DIR,
    TOKENIZER_DIR,
)
from gristmill.plugin.atomic import remove_stale_temporaries
from gristmill.store.manifest import load_manifest, manifest_problems, seal_matches
from gristmill.store.tasks import read_record

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the fingerprint check still holds
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("gristmill")

# Everything in them is gristmill's.
OWN_DIRECTORIES = (TASKS_DIR, PLANS_DIR, TOKENIZER_DIR, METADATA_DIR, INDEX_DIR)
TASK_FILE = re.compile(r"\d{5}-")  # a task's files start with its number (tasks.task_prefix)
TEMPORARY = re.compile(r"\.tmp-\d+$")  # write_atomic's temporary names (of the manifest)
SHOWN = 10  # foreign files named in a refusal


class Claim:
    """An output directory this process writes: locked until :meth:`finish` or process exit."""

    def __init__(self, out_dir: Path, config_fp: str, overwrite: bool):
        self.out_dir = out_dir
        self.config_fp = config_fp
        self.up_to_date: dict[str, Any] | None = None  # the manifest, when there is nothing to do
        self.resuming = False
        self._fd: int | None = None
        if out_dir.exists() and not out_dir.is_dir():
            raise DatasetError(f"{out_dir} exists and is not a directory; choose another -o")
        if (out_dir / INCOMPLETE).exists():
            previous = self._lock()
            if previous.get("config_fingerprint") == config_fp or overwrite or "failed" in previous:
                self._refuse_others(_others(out_dir, SPLITS))
            if previous.get("config_fingerprint") == config_fp:
                self.resuming = True
            elif overwrite:
                self._start_over()
            elif "failed" in previous:
                # It stopped on an error, so its settings or input had to change anyway.
                log.info(
                    f"{out_dir}: an earlier prepare failed ({previous['failed']}); starting over"
                )
                self._start_over()
            else:
                self.release()
                raise DatasetError(
                    f"{out_dir} holds an unfinished prepare of other sources or settings: run "
                    "that command again to finish it, or pass --overwrite to start over"
                )
        elif (found := dataset_manifest(out_dir)) is not None:
            manifest, damaged = found
            if manifest.get("config_fingerprint") == config_fp and not overwrite:
                if not damaged:
                    self.up_to_date = manifest
                    return
                # The same settings: preparing again restores what was damaged.
                log.info(f"{out_dir}: its {MANIFEST} is damaged; preparing the dataset again")
            elif not overwrite:
                raise DatasetError(
                    f"{out_dir} already holds a dataset prepared from other sources or settings; "
                    "pass --overwrite to replace it, or choose another -o"
                )
            listed = manifest.get("splits")  # read unchecked: it may be damaged
            self._refuse_others(
                _others(out_dir, (*SPLITS, *(listed if isinstance(listed, dict) else ())))
            )
            self._start_over()
        elif out_dir.exists() and any(out_dir.iterdir()):
            raise DatasetError(
                f"{out_dir} is not empty and is not a gristmill dataset; choose a new or empty -o"
            )
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
        self._write_marker()

    def _lock(self) -> dict[str, Any]:
        """Lock the marker (creating it); return what it held."""
        self._fd = os.open(self.out_dir / INCOMPLETE, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _marker(self._fd).get("pid", "?")
                self.release()
                raise DatasetError(
                    f"another gristmill prepare (process {holder}) is writing {self.out_dir}; "
                    "wait for it to finish, or choose another -o"
                ) from None
        return _marker(self._fd)

    def _refuse_others(self, others: list[Path]) -> None:
        """Refuse to touch a directory that holds files gristmill did not write."""
        if not others:
            return
        self.release()
        names = sorted(str(path.relative_to(self.out_dir)) for path in others)
        shown = ", ".join(names[:SHOWN]) + (
            f" and {len(names) - SHOWN} more" if names[SHOWN:] else ""
        )
        raise DatasetError(
            f"{self.out_dir} holds files gristmill did not write: {shown}; move them out of it "
            "(nothing was removed), or choose another -o"
        )

    def _start_over(self) -> None:
        """Remove everything gristmill wrote here (the caller made sure that is all there is)."""
        self.release()
        for entry in self.out_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self._lock()

    def _write_marker(self, **extra: str) -> None:
        assert self._fd is not None
        content = {"config_fingerprint": self.config_fp, "pid": os.getpid(), **extra}
        data = json.dumps(content).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def finished_tasks(self, count: int, splits: Iterable[str]) -> set[int]:
        """Tasks (of ``count``) whose record and every file it names are intact; everything
        else in the directory that no such record names (partial shards, temporary files) goes."""
        done: set[int] = set()
        keep: set[Path] = set()
        for index in range(count) if self.resuming else ():
            record = read_record(self.out_dir, index)
            if record is None or record.get("config_fingerprint") != self.config_fp:
                continue
            files = list(_record_files(self.out_dir, index, record))
            if all(path.is_file() and size in (-1, path.stat().st_size) for path, size in files):
                done.add(index)
                keep.update(path for path, _ in files)
        for directory in (*(self.out_dir / s for s in splits), self.out_dir / TASKS_DIR):
            for path in directory.glob("*") if directory.is_dir() else ():
                if path not in keep:
                    path.unlink()
        # What a killed run left half-written (this run holds the lock: none is being written).
        strays = (
            *self.out_dir.glob(f"{MANIFEST}.tmp-*"),
            *self.out_dir.parent.glob(f"{glob.escape(self.out_dir.name)}.rejects.jsonl.tmp-*"),
        )
        for stray in strays:
            stray.unlink()
        if self.resuming:
            log.info(
                f"{self.out_dir}: resuming an unfinished prepare: {len(done):,} of {count:,} "
                "task(s) already done"
            )
        return done

    def failed(self, error: BaseException) -> None:
        """The run stopped on an error (not an interruption): a later run with other settings
        or input may start over instead of being refused."""
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        try:
            self._write_marker(failed=message[:200])
        except OSError as exc:  # a full disk: the error being raised says more than this one
            log.warning(f"{self.out_dir / INCOMPLETE}: could not record the failure ({exc})")
        # A worker killed mid-write (the out-of-memory killer) left its temporary file.
        for directory in (*(self.out_dir / s for s in SPLITS), self.out_dir / TASKS_DIR):
            if directory.is_dir():
                remove_stale_temporaries(directory)

    def finish(self) -> None:
        """The manifest is written: drop the task records, then the marker and its lock."""
        shutil.rmtree(self.out_dir / TASKS_DIR, ignore_errors=True)
        (self.out_dir / INCOMPLETE).unlink()
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def dataset_manifest(out_dir: Path) -> tuple[dict[str, Any], bool] | None:
    """The manifest of the dataset in ``out_dir``, and whether it is damaged (its seal broken,
    or it disagrees with itself: still gristmill's, to replace, never up to date); ``None``
    when there is no gristmill dataset (``--overwrite`` never deletes a directory gristmill
    did not write)."""
    if not (out_dir / MANIFEST).exists():
        return None
    try:
        manifest, data = load_manifest(out_dir)
    except DatasetError:
        return None
    return manifest, seal_matches(data) is False or any(manifest_problems(manifest))


def _others(out_dir: Path, splits: Iterable[str]) -> list[Path]:
    """The files in ``out_dir`` that gristmill did not write: anything but the manifest, the
    marker, gristmill's own directories, and in the splits' directories the files named after
    a task (``TTTTT-``, shards and their temporary files)."""
    others: list[Path] = []
    for entry in out_dir.iterdir():
        name = entry.name
        if name in (MANIFEST, INCOMPLETE, *OWN_DIRECTORIES):
            continue
        if name.startswith(f"{MANIFEST}.") and TEMPORARY.search(name):
            continue
        if name in splits and entry.is_dir() and not entry.is_symlink():
            for path in entry.iterdir():
                if not (TASK_FILE.match(path.name) and path.is_file() and not path.is_symlink()):
                    others += _files(path)
        else:
            others += _files(entry)
    return others


def _files(path: Path) -> list[Path]:
    """``path`` itself, or the files in it when it is a directory (to name them)."""
    if path.is_dir() and not path.is_symlink():
        return [p for p in path.rglob("*") if not p.is_dir()] or [path]
    return [path]


def _marker(fd: int) -> dict[str, Any]:
    try:
        content = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except ValueError:  # torn, or written by an older gristmill: matches no fingerprint
        return {}
    return content if isinstance(content, dict) else {}


def _record_files(out_dir: Path, index: int, record: dict[str, Any]) -> Iterable[tuple[Path, int]]:
    """Every file a task record names, with its size (``-1``: any size)."""
    yield out_dir / TASKS_DIR / f"{index:05d}-record.json", -1
    for split in record.get("splits", {}).values():
        for shard in split["shards"]:
            for value in shard.values():
                if isinstance(value, dict) and "path" in value:
                    yield out_dir / value["path"], value["bytes"]
        for key in ("digests", "metadata"):
            if key in split:
                yield out_dir / TASKS_DIR / split[key], -1
    if record.get("skipped"):
        yield out_dir / TASKS_DIR / f"{index:05d}-rejects.jsonl", -1
