"""``export``: a prepared dataset written in another project's format by an exporter plugin."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gristmill._version import __version__
from gristmill.dataset import open_dataset
from gristmill.errors import DatasetError, PluginError
from gristmill.manifest import durable, read_manifest, sync_directory
from gristmill.plugins import PluginManager, get_manager

RECORD = "export.json"


def export(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    to: str,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    manager: PluginManager | None = None,
) -> Path:
    """Write the prepared dataset at ``path`` into the directory ``output`` with exporter ``to``.

    ``splits``: the splits to export (default: all). The exporter writes into a temporary
    directory beside ``output``, which is renamed to ``output`` only when every split is
    written and on disk, with ``export.json`` (exporter, gristmill version, the dataset's
    fingerprint and each split's summary): an ``output`` that exists is whole. ``overwrite``
    replaces an earlier export, never a directory gristmill did not write. ``progress=None``
    shows progress bars only on a terminal. Returns ``output`` as a :class:`~pathlib.Path`.
    """
    manager = manager or get_manager()
    record = manager.exporter(to)
    source = Path(path)
    manifest = read_manifest(source)
    available = list(manifest["splits"])
    chosen = list(splits) if splits else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise DatasetError(
            f"{source}: no split {unknown[0]!r}; this dataset has {', '.join(available)}"
        )
    out = Path(output)
    _check_output(out, source, overwrite)
    show = sys.stderr.isatty() if progress is None else progress

    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        summaries: dict[str, Any] = {}
        for split in dict.fromkeys(chosen):
            dataset = open_dataset(source, split, manager=manager)
            summaries[split] = dict(record.export(dataset, partial, progress=show))
        try:
            text = json.dumps(
                {
                    "exporter": record.name,
                    "gristmill_version": __version__,
                    "dataset": str(source.resolve()),
                    "fingerprint": manifest["fingerprint"],
                    "splits": summaries,
                },
                indent=2,
            )
        except (TypeError, ValueError) as exc:
            raise PluginError(
                f"exporter {record.name!r} returned a summary that is not JSON: {exc}"
            ) from None
        (partial / RECORD).write_text(text + "\n", encoding="utf-8")
        _sync_tree(partial)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
        sync_directory(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


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
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_directory(Path(directory))
