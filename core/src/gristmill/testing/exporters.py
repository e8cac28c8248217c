"""Exporters: every split of a prepared dataset written, with a JSON summary each, the same bytes
every time; a dataset the format cannot hold refused with a DatasetError (reported as a skip)."""

from __future__ import annotations

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


def check_export(record: ExporterType, context: Context) -> None:
    import gristmill

    source = context.once("dataset", lambda folder: dataset(folder, context.manager))
    splits = list(json.loads((source / MANIFEST).read_text("utf-8"))["splits"])
    outputs = []
    for name in ("first", "again"):
        out = context.tmp_path / name
        try:
            gristmill.export(source, out, to=record.name, progress=False, manager=context.manager)
        except DatasetError as exc:
            pytest.skip(f"exporter {record.name!r} cannot hold the kit's dataset: {exc}")
        outputs.append(_tree(out))
    first, again = outputs
    summary = json.loads(first["export.json"])
    assert list(summary["splits"]) == splits, f"summaries for {list(summary['splits'])}"
    assert set(first) - {"export.json"}, "the exporter wrote no file"
    assert first == again, "two exports of one dataset differ: " + ", ".join(
        sorted(k for k in first.keys() | again.keys() if first.get(k) != again.get(k))
    )
