"""``export``: a prepared dataset written in another project's format by an exporter plugin."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gristmill._version import __version__
from gristmill.errors import DatasetError, PluginError
from gristmill.options import DatasetOptions
from gristmill.plugin.atomic import durable, sync_directory
from gristmill.plugin.components import ExporterType
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.plugin.remote import redacted
from gristmill.serve.dataset import Dataset, how_to_make, open_dataset, where
from gristmill.store.integrity import check_intact
from gristmill.store.manifest import read_manifest
from gristmill.store.verify import files

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

RECORD = "export.json"


def export(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    to: str,
    splits: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    cache_limit: int | None = None,
    manager: PluginManager | None = None,
) -> Path:
    """Write the prepared dataset at ``path`` into the directory ``output`` with exporter ``to``.

    ``splits``: the splits to export (default: all). ``options``: the exporter's own (those it
    declares, ``gristmill plugins --all``; any other key is an
    :class:`~gristmill.errors.OptionError`). The exporter writes into a temporary
    directory beside ``output``, which is renamed to ``output`` only when every split is
    written and on disk, with ``export.json`` (exporter, gristmill version, the dataset's
    fingerprint and each split's summary): an ``output`` that exists is whole. Every file of
    the exported splits is checked against the manifest's SHA-256 as it is first read, and the
    files the exporter did not read through the dataset before the output is kept (see
    :mod:`gristmill.store.integrity`): a damaged dataset raises
    :class:`~gristmill.errors.DatasetError` naming the file, and nothing is exported.
    ``overwrite`` replaces an earlier export, never a directory gristmill did not write.
    ``progress=None`` shows progress bars only on a terminal. Returns ``output`` as a
    :class:`~pathlib.Path`. ``path`` may be a URL, read as ``open_dataset`` reads it
    (``storage_options``, ``cache_limit``; an exporter that reads files past the reader
    reaches them with :func:`gristmill.plugin.remote.local_file`).
    """
    record = (manager := manager or get_manager()).get(ExporterType, to)
    options = record.check_options(options)
    remote = DatasetOptions(storage_options=storage_options or {}, cache_limit=cache_limit)
    opened, mirror = where(path, remote)
    source = Path(opened) if mirror is None else mirror.root  # the folder read
    manifest = read_manifest(source)
    chosen = _chosen_splits(os.fspath(path) if mirror is None else mirror.url, manifest, splits)
    _check_output(out := Path(output), source, overwrite)
    show = sys.stderr.isatty() if progress is None else progress

    _remove_abandoned(out)
    with _workspace(out) as work:
        partial = work / "out"
        partial.mkdir()
        summaries: dict[str, Any] = {}
        for split in chosen:
            dataset = _open_split(opened, split, manifest, manager, remote)
            summaries[split] = dict(record.export(dataset, partial, progress=show, **options))
            _check_read(source, manifest, split, remote=mirror is not None)
        _check_read(source, manifest, None, remote=mirror is not None)
        name = str(source.resolve()) if mirror is None else mirror.url
        text = _record_text(record.name, name, manifest, summaries)
        (partial / RECORD).write_text(text + "\n", encoding="utf-8")
        _sync_tree(partial)
        if out.exists():
            os.replace(out, work / "replaced")  # removed with the workspace below
        os.replace(partial, out)
        sync_directory(out.parent)
    return out


def _open_split(
    source: str | os.PathLike[str],
    split: str,
    manifest: dict[str, Any],
    manager: PluginManager,
    remote: DatasetOptions,
) -> Dataset:
    """Split ``split`` of the dataset ``manifest`` describes, refused if it was prepared again
    since: the splits and ``export.json`` must be one dataset."""
    dataset = open_dataset(
        source,
        split,
        storage_options=remote.storage_options,
        cache_limit=remote.cache_limit,
        manager=manager,
    )
    if dataset.manifest != manifest:
        raise DatasetError(
            "the dataset was prepared again while it was being exported; nothing was "
            "exported. Run the export again",
            where=redacted(os.fspath(source)),
        )
    return dataset


def _check_read(source: Path, manifest: dict[str, Any], split: str | None, *, remote: bool) -> None:
    """Check the files of ``split`` (``None``: the tokenizer's, which an exporter may copy)
    after the exporter ran: those it read itself, or not at all (those read through the
    dataset were checked as they were opened, and are only looked up again). In a remote
    dataset's mirror, a file that is not there was never served from it: each file the mirror
    served was checked as it landed, so nothing is fetched only to be checked."""
    if split is None:
        entries = list(manifest["tokenizer"].get("files", []))
    else:
        entries = [e for shard in manifest["splits"][split]["shards"] for e in files(shard)]
    for entry in entries:
        if not remote or (source / entry["path"]).exists():
            check_intact(source, entry)


def _chosen_splits(
    source: str, manifest: dict[str, Any], splits: Sequence[str] | None
) -> list[str]:
    """The splits to export, each once: ``splits``, or all the dataset has."""
    available = list(manifest["splits"])
    chosen = list(splits) if splits else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise DatasetError(
            f"{source}: no split {unknown[0]!r}; this dataset has {', '.join(available)}"
            + how_to_make(unknown[0])
        )
    return list(dict.fromkeys(chosen))


def _record_text(
    exporter: str, source: str, manifest: dict[str, Any], summaries: dict[str, Any]
) -> str:
    """``export.json``: the exporter, gristmill's version, the dataset and each split's summary."""
    try:
        return json.dumps(
            {
                "exporter": exporter,
                "gristmill_version": __version__,
                "dataset": source,
                "fingerprint": manifest["fingerprint"],
                "splits": summaries,
            },
            indent=2,
        )
    except (TypeError, ValueError) as exc:
        raise PluginError(
            f"exporter {exporter!r} returned a summary that is not JSON: {exc}"
        ) from None


def _check_output(out: Path, source: Path, overwrite: bool) -> None:
    """Refuse an output that would lose data: an existing one (unless it is an earlier export and
    ``overwrite``), or one inside the dataset."""
    if out.resolve().is_relative_to(source.resolve()):
        raise DatasetError(f"{out}: the output must not be inside the dataset {source}")
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return  # an empty directory made for the export
    if not out.is_dir() or out.is_symlink() or not (out / RECORD).is_file():
        raise DatasetError(
            f"{out} exists and is not a gristmill export; choose another output or remove it"
        )
    if not overwrite:
        raise DatasetError(f"{out} holds an earlier export; pass --overwrite to replace it")


def _sync_tree(root: Path) -> None:
    """Put every file the exporter wrote on disk before the output appears under its name (as
    prepare does; ``GRISTMILL_FSYNC=0`` skips it)."""
    if not durable():
        return
    for directory, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_directory(Path(directory))


@contextmanager
def _workspace(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` for one export, locked while the export runs (the lock
    ends with the process, however it ends), removed when it is done.

    The exporter writes into it, and an earlier export that ``out`` replaces moves into it
    first, so an export killed at any point leaves only this directory, which the next export
    into ``out`` removes (:func:`_remove_abandoned`).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
        lock = _lock(work)
        if lock is None or _still(lock, work):
            break
        os.close(lock)  # another export took it for abandoned before the lock: a new one
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def _lock(work: Path) -> int | None:
    """A descriptor of ``work`` holding its exclusive lock (``None`` where there is no
    ``flock``)."""
    if fcntl is None:
        return None
    fd = os.open(work, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _still(fd: int, work: Path) -> bool:
    """Whether ``work`` is still the directory ``fd`` was opened on."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(work))
    except FileNotFoundError:
        return False


def _remove_abandoned(out: Path) -> None:
    """Remove the workspaces that killed exports into ``out`` left: those whose lock no running
    export holds. (Without ``flock``, on Windows, they stay.)"""
    if fcntl is None:
        return
    for work in out.parent.glob(glob.escape(f".{out.name}.export-") + "*"):
        if work.is_symlink() or not work.is_dir():
            continue
        try:
            fd = os.open(work, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # an export running now
        else:
            shutil.rmtree(work, ignore_errors=True)
        finally:
            os.close(fd)
