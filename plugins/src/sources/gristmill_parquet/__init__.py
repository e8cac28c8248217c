"""``parquet``: Parquet files read row group by row group, with optional column projection.

Importing this plugin does not import pyarrow: every rank of a job imports every plugin, and
``gristmill plugins`` must work without the extra. pyarrow loads when a Parquet file is opened.
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import SourceType
from gristmill_parquet.parquet_source import ParquetSource


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="parquet",
            description="Parquet files, streamed by row group; optional column projection (.parquet, .pq)",
            suffixes=(".parquet", ".pq"),
            requires="parquet",
            factory=ParquetSource,
            options={
                "columns": "read only these columns (a list of names)",
                "batch_size": "rows per record batch (default: sized from the row group's bytes)",
            },
        )
    ]
