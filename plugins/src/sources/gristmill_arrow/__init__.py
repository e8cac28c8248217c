"""``arrow``: Arrow IPC files (the file and the stream format, Feather v2) and folders that
``datasets`` saved with ``save_to_disk``, streamed by record batch.

A saved folder is one source: the core hands it over whole because it holds one of the
``markers`` (``state.json``, ``dataset_dict.json``, ``dataset_info.json``) instead of expanding it
file by file. Importing this plugin does not import pyarrow: every rank of a job imports every
plugin, and ``gristmill plugins`` must work without the extra. pyarrow loads when a file is
opened.
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import SourceType
from gristmill_arrow.arrow_source import ArrowSource
from gristmill_arrow.saved import MARKERS


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="arrow",
            description="Arrow IPC files (file or stream format, Feather v2) and datasets' "
            "save_to_disk folders, streamed by record batch (.arrow, .arrows, .feather, .ipc)",
            suffixes=(".arrow", ".arrows", ".feather", ".ipc"),
            markers=MARKERS,
            requires="parquet",
            factory=ArrowSource,
            options={
                "columns": "read only these columns (a list of names)",
                "split": "the split of a DatasetDict folder to read (default: train)",
            },
        )
    ]
