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
from gristmill.errors import DatasetError, GristmillError, PluginError
from gristmill.plugin.components import ExporterType
from gristmill.serve.dataset import Dataset


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


def export_spans(dataset: Dataset, directory: Path, *, progress: bool, **options: Any) -> dict:
    """Reads as gristmill-megatron does: the token stream in batches through ``spans``."""
    docs = dataset.documents
    lengths = docs.lengths()
    with open(directory / f"{dataset.split}.bin", "wb") as out:
        for lo in range(0, len(lengths), 7):
            batch = np.arange(lo, min(lo + 7, len(lengths)))
            tokens, _ = docs.spans(batch, np.zeros(len(batch), np.int64), lengths[batch])
            out.write(tokens.tobytes())
    return {"documents": len(lengths)}


def export_lengths(dataset: Dataset, directory: Path, *, progress: bool, **options: Any) -> dict:
    """Reads the index only: the token files are never touched."""
    np.save(directory / f"{dataset.split}.lengths.npy", dataset.documents.lengths())
    return {}


def export_samples(dataset: Dataset, directory: Path, *, progress: bool, **options: Any) -> dict:
    """Reads packed samples (``dataset.batch``), not documents."""
    ids = [s["input_ids"] for s in dataset.batch(np.arange(len(dataset)))]
    np.save(directory / f"{dataset.split}.npy", np.concatenate(ids))
    return {}


def export_copy(dataset: Dataset, directory: Path, *, progress: bool, **options: Any) -> dict:
    """Copies the shard files as they are, past the reader."""
    for shard in dataset.manifest["splits"][dataset.split]["shards"]:
        source = dataset.path / shard["tokens"]["path"]
        (directory / source.name).write_bytes(source.read_bytes())
    return {}


class ReadingPlugin:
    """One exporter per way of reading a split."""

    @hookimpl
    def gristmill_exporters(self) -> list[ExporterType]:
        return [
            ExporterType(name=name, description=f"reads via {name}", export=export)
            for name, export in [
                ("document", export_npy),
                ("spans", export_spans),
                ("lengths", export_lengths),
                ("samples", export_samples),
                ("copy", export_copy),
            ]
        ]


@pytest.fixture
def sharded(tmp_path, write_jsonl) -> Path:
    rows = [{"text": f"document {i} " + "x" * (i % 17)} for i in range(300)]
    out = tmp_path / "ds"
    gristmill.prepare(
        [write_jsonl(rows)], out, tokenizer="byte", val_fraction=0.2, tokens_per_shard=2000
    )
    return out


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01  # an id off by one: still inside the vocabulary, so only a hash tells
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reader", ["document", "spans", "lengths", "samples", "copy"])
@pytest.mark.parametrize(
    ("kind", "shard", "at"),
    [("tokens", 0, 0.5), ("tokens", -1, 0.5), ("offsets", 1, 0.5)],
    ids=["first-shard", "last-shard", "an-offset"],
)
def test_a_flipped_byte_is_never_exported(
    sharded, tmp_path, gristmill_register, reader, kind, shard, at
):
    gristmill_register(ReadingPlugin())
    manifest = json.loads((sharded / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) > 2
    entry = shards[shard][kind]
    flip_byte(sharded / entry["path"], int(entry["bytes"] * at) // 8 * 8)  # an offset's low byte
    with pytest.raises(DatasetError) as caught:
        gristmill.export(sharded, tmp_path / "out", to=reader)
    message = str(caught.value)
    assert entry["path"] in message and "SHA-256" in message
    assert f"gristmill verify {sharded}" in message and "prepare" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds"]


def test_a_damaged_file_of_a_split_not_exported_does_not_matter(
    sharded, tmp_path, gristmill_register
):
    gristmill_register(ReadingPlugin())
    val = json.loads((sharded / "manifest.json").read_text())["splits"]["val"]["shards"][0]
    flip_byte(sharded / val["tokens"]["path"], 0)
    out = gristmill.export(sharded, tmp_path / "out", to="spans", splits=["train"])
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "train.bin"]


def test_the_cli_names_the_damaged_file(sharded, tmp_path, gristmill_register, capsys):
    gristmill_register(ReadingPlugin())
    shard = json.loads((sharded / "manifest.json").read_text())["splits"]["val"]["shards"][0]
    entry = shard["tokens"]
    flip_byte(sharded / entry["path"], 0)
    out = tmp_path / "out"
    assert main(["export", str(sharded), "--to", "spans", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gristmill: error: ") and entry["path"] in err and "verify" in err
    assert not out.exists()


def test_a_changed_tokenizer_file_is_never_exported(sharded, tmp_path, gristmill_register):
    gristmill_register(ReadingPlugin())
    (entry,) = json.loads((sharded / "manifest.json").read_text())["tokenizer"]["files"]
    flip_byte(sharded / entry["path"], entry["bytes"] // 2)
    with pytest.raises(DatasetError, match=rf"{entry['path']}: SHA-256 .*gristmill verify"):
        gristmill.export(sharded, tmp_path / "out", to="spans")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds"]


@pytest.mark.parametrize("again", ["same", "other"])
def test_a_dataset_prepared_again_during_the_export_is_not_exported(
    tmp_path, gristmill_register, write_jsonl, again
):
    """The splits of an export, and the fingerprint in export.json, are of one dataset: prepared
    again from other data, the split being exported no longer matches its hashes; from the same
    data (the same bytes, another generation), the next split's manifest is not the first's."""
    rows = [{"text": f"document {i} " + "x" * (i % 17)} for i in range(300)]
    first = write_jsonl(rows)
    other = write_jsonl([{"text": f"another {i}"} for i in range(300)], name="other.jsonl")
    source = tmp_path / "ds"

    def prepare(data: Path, **extra: Any) -> None:
        gristmill.prepare([data], source, tokenizer="byte", val_fraction=0.2, **extra)

    prepare(first)

    class PreparingAgain:
        @hookimpl
        def gristmill_exporters(self) -> list[ExporterType]:
            def export(dataset: Dataset, directory: Path, **options: Any) -> dict:
                summary = export_spans(dataset, directory, **options)
                prepare(first if again == "same" else other, overwrite=True)
                return summary

            return [ExporterType(name="racing", description="prepares again", export=export)]

    gristmill_register(PreparingAgain())
    # From other data, the split being exported may be found changed first.
    expected = "prepared again while it was being exported"
    with pytest.raises(
        DatasetError, match=expected if again == "same" else f"{expected}|SHA-256|bytes, but"
    ):
        gristmill.export(source, tmp_path / "out", to="racing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "ds", "other.jsonl"]
