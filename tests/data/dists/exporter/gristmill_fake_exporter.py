"""An exporter plugin for tests that run ``gristmill export`` as a real process: ``chunks``
writes each split's token stream as many small files, so that an export has many steps to be
killed between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.plugin.components import ExporterType

CHUNK = 512  # tokens a file


def export_chunks(dataset: Any, directory: Path, *, progress: bool, **options: Any) -> dict:
    """``SPLIT/NNNNN.bin``: the split's tokens, ``CHUNK`` at a time; ``SPLIT/lengths.bin``."""
    docs = dataset.documents
    lengths = docs.lengths()
    tokens, _ = docs.spans(np.arange(len(lengths)), np.zeros(len(lengths), np.int64), lengths)
    folder = directory / dataset.split
    folder.mkdir()
    for k, lo in enumerate(range(0, len(tokens), CHUNK)):
        (folder / f"{k:05d}.bin").write_bytes(tokens[lo : lo + CHUNK].tobytes())
    (folder / "lengths.bin").write_bytes(lengths.tobytes())
    return {"documents": len(lengths), "tokens": len(tokens)}


@hookimpl
def gristmill_exporters() -> list[ExporterType]:
    return [ExporterType(name="chunks", description="many small files", export=export_chunks)]
