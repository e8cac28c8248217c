"""Exporters: every split of a prepared dataset written, with a JSON summary each, the same bytes
every time. A format that cannot hold loss masks refuses a dataset with them (a DatasetError)
and is checked on one without; one that refuses that too is reported as a skip."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from gristmill.errors import DatasetError
from gristmill.layout import MANIFEST
from gristmill.plugin.components import ExporterType
from gristmill.testing.data import dataset
from gristmill.testing.kit import Check, Context


def checks(record: ExporterType) -> dict[str, Check]:
    return {"export": check_export}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _exported(record: ExporterType, context: Context, out: Path) -> Path:
    """The kit's dataset exported to ``out``: the one with loss masks, else the one without."""
    import gristmill

    refusal = None
    for masks in (True, False):
        made = functools.partial(dataset, manager=context.manager, masks=masks)
        source = context.once(f"dataset-masks={masks}", made)
        try:
            gristmill.export(source, out, to=record.name, progress=False, manager=context.manager)
        except DatasetError as exc:
            refusal = exc
            continue
        return source
    pytest.skip(f"exporter {record.name!r} cannot hold the kit's datasets: {refusal}")


def check_export(record: ExporterType, context: Context) -> None:
    source = _exported(record, context, context.tmp_path / "first")
    _exported(record, context, context.tmp_path / "again")
    splits = list(json.loads((source / MANIFEST).read_text("utf-8"))["splits"])
    first, again = _tree(context.tmp_path / "first"), _tree(context.tmp_path / "again")
    summary = json.loads(first["export.json"])
    assert list(summary["splits"]) == splits, f"summaries for {list(summary['splits'])}"
    assert set(first) - {"export.json"}, "the exporter wrote no file"
    assert first == again, "two exports of one dataset differ: " + ", ".join(
        sorted(k for k in first.keys() | again.keys() if first.get(k) != again.get(k))
    )
