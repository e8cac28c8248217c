"""``gristmill export``: exporter plugins write a dataset whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gristmill
from gristmill import hookimpl
from gristmill.cli import main
from gristmill.components import ExporterType
from gristmill.dataset import Dataset
from gristmill.errors import DatasetError, GristmillError, PluginError


def export_npy(dataset: Dataset, directory: Path, *, progress: bool, **options: Any) -> dict:
    """A real exporter: every document of the split concatenated into SPLIT.npy, with offsets."""
    docs = [dataset.documents.document(i)[0] for i in range(dataset.documents.num_documents)]
    tokens = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    np.save(directory / f"{dataset.split}.npy", tokens)
    np.save(directory / f"{dataset.split}.offsets.npy", np.cumsum([0, *map(len, docs)]))
    return {"documents": len(docs), "tokens": len(tokens)}


class NpyPlugin:
    @hookimpl
    def gristmill_exporters(self) -> list[ExporterType]:
        return [ExporterType(name="npy", description="one .npy per split", export=export_npy)]


class FailingPlugin:
    """Exports train, then fails on val: nothing may be left behind."""

    @hookimpl
    def gristmill_exporters(self) -> list[ExporterType]:
        def export(dataset: Dataset, directory: Path, **options: Any) -> dict:
            if dataset.split == "val":
                raise DatasetError("val cannot be exported")
            return export_npy(dataset, directory, **options)

        return [ExporterType(name="half", description="fails on val", export=export)]


@pytest.fixture
def dataset(tmp_path, write_jsonl) -> Path:
    rows = [{"text": f"document {i} " + "x" * (i % 17)} for i in range(200)]
    out = tmp_path / "ds"
    gristmill.prepare([write_jsonl(rows)], out, tokenizer="byte", val_fraction=0.2)
    return out


def test_every_split_is_exported_token_for_token(dataset, tmp_path, gristmill_register):
    gristmill_register(NpyPlugin())
    out = gristmill.export(dataset, tmp_path / "out", to="npy")
    record = json.loads((out / "export.json").read_text())
    assert record["exporter"] == "npy"
    assert (
        record["fingerprint"] == json.loads((dataset / "manifest.json").read_text())["fingerprint"]
    )
    assert set(record["splits"]) == {"train", "val"}
    for split in ("train", "val"):
        docs = gristmill.open_dataset(dataset, split).documents
        tokens = np.load(out / f"{split}.npy")
        offsets = np.load(out / f"{split}.offsets.npy")
        assert record["splits"][split] == {"documents": docs.num_documents, "tokens": len(tokens)}
        for i in range(docs.num_documents):
            assert np.array_equal(tokens[offsets[i] : offsets[i + 1]], docs.document(i)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds", "out"]


def test_one_split_through_the_cli(dataset, tmp_path, gristmill_register, capsys):
    gristmill_register(NpyPlugin())
    out = tmp_path / "out"
    assert main(["export", str(dataset), "--to", "npy", "-o", str(out), "--split", "val"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "val.npy", "val.offsets.npy"]
    assert "exported" in capsys.readouterr().out


def test_a_failed_export_leaves_nothing(dataset, tmp_path, gristmill_register):
    gristmill_register(FailingPlugin())
    with pytest.raises(DatasetError, match="val cannot be exported"):
        gristmill.export(dataset, tmp_path / "out", to="half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds"]


def test_existing_outputs_are_kept_unless_they_are_an_export_to_overwrite(
    dataset, tmp_path, gristmill_register
):
    gristmill_register(NpyPlugin())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="is not a gristmill export"):
        gristmill.export(dataset, mine, to="npy", overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"

    out = gristmill.export(dataset, tmp_path / "out", to="npy", splits=["val"])
    with pytest.raises(DatasetError, match="pass --overwrite"):
        gristmill.export(dataset, out, to="npy")
    gristmill.export(dataset, out, to="npy", splits=["train"], overwrite=True)
    assert not (out / "val.npy").exists() and (out / "train.npy").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (gristmill.export(dataset, empty, to="npy") / "export.json").is_file()


def test_bad_requests_are_clear_errors(dataset, tmp_path, gristmill_register, capsys):
    gristmill_register(NpyPlugin())
    with pytest.raises(DatasetError, match="no split 'test'; this dataset has train, val"):
        gristmill.export(dataset, tmp_path / "out", to="npy", splits=["test"])
    with pytest.raises(DatasetError, match="must not be inside the dataset"):
        gristmill.export(dataset, dataset / "export", to="npy")
    with pytest.raises(GristmillError, match="no exporter named 'megatron'; available: npy"):
        gristmill.export(dataset, tmp_path / "out", to="megatron")
    assert main(["export", str(dataset), "--to", "nope", "-o", str(tmp_path / "o")]) == 2
    assert "gristmill plugins --all" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_a_summary_that_is_not_json_is_the_plugins_fault(dataset, tmp_path, gristmill_register):
    class OddPlugin:
        @hookimpl
        def gristmill_exporters(self) -> list[ExporterType]:
            def export(dataset: Dataset, directory: Path, **options: Any) -> dict:
                return {"tokens": np.int64(3)}

            return [ExporterType(name="odd", description="odd summary", export=export)]

    gristmill_register(OddPlugin())
    with pytest.raises(PluginError, match="exporter 'odd' returned a summary that is not JSON"):
        gristmill.export(dataset, tmp_path / "out", to="odd")
    assert not (tmp_path / "out").exists()
