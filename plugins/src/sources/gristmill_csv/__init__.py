"""Delimited-text sources: ``csv`` and ``tsv``, with RFC 4180 quoting; ``.gz``/``.zst`` too."""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import SourceType
from gristmill_csv.csv_source import open_csv, open_tsv


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="csv",
            description="CSV files with a header row (or --column-names); quoted fields (.csv)",
            suffixes=(".csv",),
            factory=open_csv,
        ),
        SourceType(
            name="tsv",
            description="tab-separated files with a header row (or --column-names) (.tsv, .tab)",
            suffixes=(".tsv", ".tab"),
            factory=open_tsv,
        ),
    ]
