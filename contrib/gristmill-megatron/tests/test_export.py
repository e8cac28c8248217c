"""Exports read back with Megatron-LM's own reader, token for token."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import documents, texts

import gristmill
from gristmill import hookimpl
from gristmill.errors import DatasetError
from gristmill.plugin.components import ExporterType, TokenizerType
from gristmill.plugin.manager import get_manager
from gristmill.store.manifest import write_manifest
from gristmill_megatron import export_megatron


def check_export(megatron, dataset: Path, out: Path, split: str, dtype: str) -> None:
    """``out/split.{bin,idx}`` is the split, read by Megatron: every document one sequence and
    one document, with the same ids, in order, in ``dtype``."""
    expected = list(documents(dataset, split))
    ds = megatron.IndexedDataset(str(out / split))
    assert len(ds) == len(expected)
    assert ds.index.dtype == np.dtype(dtype).type
    assert ds.sequence_lengths.tolist() == [len(ids) for ids in expected]
    assert ds.document_indices.tolist() == list(range(len(expected) + 1))
    for i, ids in enumerate(expected):
        assert ds[i].tolist() == ids.tolist(), f"document {i}"
    if expected:  # a contiguous slice is one read of many sequences
        got = ds[0 : len(expected)]
        assert [g.tolist() for g in got] == [ids.tolist() for ids in expected]
        tokens = sum(map(len, expected))
        assert (out / f"{split}.bin").stat().st_size == tokens * ds.index.dtype_size


def test_the_exporter_is_registered_by_its_distribution():
    manager = get_manager()
    record = manager.get(ExporterType, "megatron")
    assert record.export is export_megatron
    assert "megatron" in record.description.lower()


def test_every_split_exports_token_for_token(prepare, tmp_path, megatron):
    # Small shards and tasks: documents come from many shard files, in several tasks.
    ds = prepare(
        [{"text": t} for t in texts(300)], val_fraction=0.3, tokens_per_shard=500, task_bytes=2000
    )
    manifest = json.loads((ds / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 5
    out = gristmill.export(ds, tmp_path / "out", to="megatron")
    record = json.loads((out / "export.json").read_text())
    assert record["exporter"] == "megatron" and record["fingerprint"] == manifest["fingerprint"]
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "train.bin",
        "train.idx",
        "val.bin",
        "val.idx",
    ]
    for split in ("train", "val"):
        summary = record["splits"][split]
        entry = manifest["splits"][split]
        assert summary["files"] == [f"{split}.bin", f"{split}.idx"]
        assert summary["prefix"] == split and summary["dtype"] == "uint16"
        assert summary["documents"] == entry["num_documents"] > 0
        assert summary["tokens"] == entry["num_tokens"]
        assert summary["bytes"]["bin"] == (out / f"{split}.bin").stat().st_size
        assert summary["bytes"]["idx"] == (out / f"{split}.idx").stat().st_size
        check_export(megatron, ds, out, split, "uint16")


@pytest.mark.parametrize("batch_tokens", [1, 7, 333, 1 << 20])
def test_batches_cut_anywhere_give_the_same_files(prepare, tmp_path, megatron, batch_tokens):
    # A batch is a range of the token stream: it may start and end inside documents.
    ds = prepare([{"text": t} for t in texts(60)], tokens_per_shard=300)
    out = tmp_path / f"out-{batch_tokens}"
    out.mkdir()
    dataset = gristmill.open_dataset(ds, "train")
    export_megatron(dataset, out, progress=False, batch_tokens=batch_tokens)
    check_export(megatron, ds, out, "train", "uint16")


def test_the_files_are_those_megatrons_own_builder_writes(prepare, tmp_path, megatron):
    ds = prepare([{"text": t} for t in texts(80)], tokens_per_shard=700)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    export_megatron(gristmill.open_dataset(ds), ours, progress=False)
    builder = megatron.IndexedDatasetBuilder(str(theirs / "train.bin"), dtype=np.uint16)
    for ids in documents(ds, "train"):  # as tools/preprocess_data.py adds each document
        builder.add_document(ids.astype(np.int64), [len(ids)])
    builder.finalize(str(theirs / "train.idx"))
    for name in ("train.bin", "train.idx"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


class DocumentsOnly:
    """A shard reader with only the required protocol (no ``spans``)."""

    def __init__(self, reader):
        self.inner = reader
        self.num_documents = reader.num_documents

    def lengths(self):
        return self.inner.lengths()

    def document(self, index):
        return self.inner.document(index)


def test_a_reader_without_spans_is_read_document_by_document(prepare, tmp_path):
    ds = prepare([{"text": t} for t in texts(50)], tokens_per_shard=200)
    with_spans, without = tmp_path / "a", tmp_path / "b"
    with_spans.mkdir(), without.mkdir()
    dataset = gristmill.open_dataset(ds)
    export_megatron(dataset, with_spans, progress=False, batch_tokens=100)
    dataset.documents = DocumentsOnly(dataset.documents)
    assert not hasattr(dataset.documents, "spans")
    export_megatron(dataset, without, progress=False, batch_tokens=100)
    for name in ("train.bin", "train.idx"):
        assert (with_spans / name).read_bytes() == (without / name).read_bytes()


def test_an_empty_split_opens_in_megatron(prepare, tmp_path, megatron):
    # A val fraction so small that no document lands in val: the split exists and is empty.
    ds = prepare([{"text": t} for t in texts(5)], val_fraction=1e-9)
    assert json.loads((ds / "manifest.json").read_text())["splits"]["val"]["num_documents"] == 0
    out = gristmill.export(ds, tmp_path / "out", to="megatron")
    summary = json.loads((out / "export.json").read_text())["splits"]["val"]
    assert (summary["documents"], summary["tokens"]) == (0, 0)
    val = megatron.IndexedDataset(str(out / "val"))  # the default reader maps the .bin
    assert len(val) == 0 and val.document_indices.tolist() == [0]
    assert val.sequence_lengths.tolist() == []
    check_export(megatron, ds, out, "train", "uint16")


class SplitBytes:
    """Bytes as ids on both sides of 65,536: even bytes keep their value, odd ones are shifted
    past it, so an export in uint16 would wrap them. EOS is the last id."""

    shift = 70_000
    vocab_size = shift + 257
    eos_id = vocab_size - 1
    bos_id = pad_id = None
    add_bos, add_eos = False, True

    def encode_batch(self, texts, *, offsets=False):
        ids = []
        for text in texts:
            raw = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.uint32)
            ids.append(np.where(raw % 2 == 1, raw + self.shift, raw))
        return ids, [np.arange(len(t.encode("utf-8"))) for t in texts] if offsets else None

    def decode(self, ids):
        ids = np.asarray(ids, np.int64)
        ids = ids[ids != self.eos_id]
        return bytes(np.where(ids >= self.shift, ids - self.shift, ids).astype(np.uint8)).decode()

    def save(self, directory):
        return {}


class SplitBytesPlugin:
    @staticmethod
    @hookimpl
    def gristmill_tokenizers():
        return [
            TokenizerType(
                name="split-bytes",
                description="test tokenizer with ids past 65,536",
                factory=lambda spec, **options: SplitBytes(),
                load=lambda directory, config, **options: SplitBytes(),
            )
        ]


def test_a_large_vocabulary_is_exported_as_int32(prepare, tmp_path, megatron, gristmill_register):
    gristmill_register(SplitBytesPlugin, name="split-bytes")
    ds = prepare([{"text": t} for t in texts(40)], tokenizer="split-bytes", tokens_per_shard=300)
    assert json.loads((ds / "manifest.json").read_text())["dtype"] == "uint32"
    first = next(documents(ds, "train"))
    assert first.min() < 256 and first.max() > 65_536  # ids on both sides of the uint16 range
    out = gristmill.export(ds, tmp_path / "out", to="megatron")
    assert json.loads((out / "export.json").read_text())["splits"]["train"]["dtype"] == "int32"
    check_export(megatron, ds, out, "train", "int32")


def test_a_tokenizer_json_with_a_large_vocabulary(prepare, tmp_path, megatron):
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizer.json needs gristmill[hf]")
    words = [f"w{i}" for i in range(70_000)]
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<eos>"])
    path = tmp_path / "wordlevel" / "tokenizer.json"
    path.parent.mkdir()
    tokenizer.save(str(path))
    rng = np.random.default_rng(1)
    records = [{"text": " ".join(rng.choice(words, 20).tolist())} for _ in range(30)]
    ds = prepare(records, tokenizer=str(path))
    assert max(int(ids.max()) for ids in documents(ds, "train")) > 65_536
    out = gristmill.export(ds, tmp_path / "out", to="megatron")
    check_export(megatron, ds, out, "train", "int32")


PROMPTS = [{"prompt": f"question {i}?", "completion": f"answer {i}."} for i in range(20)]


def test_loss_masks_are_refused_and_nothing_is_left(prepare, tmp_path):
    ds = prepare(PROMPTS)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as caught:
        gristmill.export(ds, out, to="megatron")
    message = str(caught.value)
    assert "split 'train' has loss masks" in message
    assert "Megatron would train on those tokens" in message
    assert "--train-on-prompt" in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", "ds.jsonl"])


def test_train_on_prompt_data_exports(prepare, tmp_path, megatron):
    ds = prepare(PROMPTS, train_on_prompt=True)
    out = gristmill.export(ds, tmp_path / "out", to="megatron")
    check_export(megatron, ds, out, "train", "uint16")


def test_unknown_options_are_ignored_and_progress_shows(prepare, tmp_path, megatron, capsys):
    ds = prepare([{"text": t} for t in texts(10)])
    out = tmp_path / "out"
    out.mkdir()
    summary = export_megatron(gristmill.open_dataset(ds), out, progress=True, some_future_option=1)
    assert summary["documents"] == 10
    assert "megatron train" in capsys.readouterr().err
    check_export(megatron, ds, out, "train", "uint16")


def gristmill_cli(*args: str) -> subprocess.CompletedProcess[str]:
    # The console script of this environment: the one that installed gristmill and this wheel.
    script = Path(sys.executable).with_name("gristmill")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gristmill"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}
    )


def test_the_command_line(prepare, tmp_path, megatron):
    ds = prepare([{"text": t} for t in texts(100)], val_fraction=0.2)
    out = tmp_path / "out"
    done = gristmill_cli("export", str(ds), "--to", "megatron", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "export.json",
        "train.bin",
        "train.idx",
        "val.bin",
        "val.idx",
    ]
    check_export(megatron, ds, out, "train", "uint16")
    check_export(megatron, ds, out, "val", "uint16")

    again = gristmill_cli("export", str(ds), "--to", "megatron", "-o", str(out), "--split", "val")
    assert again.returncode != 0 and "--overwrite" in again.stderr
    again = gristmill_cli(
        "export", str(ds), "--to", "megatron", "-o", str(out), "--split", "val", "--overwrite"
    )
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "val.bin", "val.idx"]
    check_export(megatron, ds, out, "val", "uint16")


def test_the_command_line_refuses_masks_and_leaves_nothing(prepare, tmp_path):
    ds = prepare(PROMPTS, name="qa")
    out = tmp_path / "out"
    done = gristmill_cli("export", str(ds), "--to", "megatron", "-o", str(out))
    assert done.returncode == 2
    assert "has loss masks" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa", "qa.jsonl"]


def test_megatron_gpt_dataset_trains_on_the_documents(prepare, tmp_path, megatron):
    """Megatron's GPTDataset (built on CPU) over an export: every sample is a window of the
    gristmill documents concatenated in the order GPTDataset chose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    ds = prepare([{"text": t} for t in texts(200)])
    out = gristmill.export(ds, tmp_path / "out", to="megatron")
    manifest = json.loads((ds / "manifest.json").read_text())["tokenizer"]

    class Tokenizer:  # what GPTDataset asks of a tokenizer
        def __init__(self) -> None:
            self.vocab_size = manifest["vocab_size"]
            self.eod = self.eos = manifest["eos_id"]
            self.pad = manifest["pad_id"]
            self.unique_identifiers = {"class": "gristmill-byte"}

    seq_len = 64
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=seq_len,
        blend=([str(out / "train")], None),
        split="100,0,0",
        tokenizer=Tokenizer(),
        reset_position_ids=True,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=str(tmp_path / "megatron-cache"),
    )
    train, _, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [50, None, None], lambda: True, config
    ).build()
    assert len(train) >= 50

    docs = list(documents(ds, "train"))
    order = train.document_index
    stream = np.concatenate([docs[d] for d in order]).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum([len(docs[d]) for d in order])])
    for i in range(len(train)):
        doc, offset = train.sample_index[train.shuffle_index[i]]
        begin = starts[doc] + offset
        window = stream[begin : begin + seq_len + 1]
        sample = train[i]
        assert sample["tokens"].tolist() == window[:-1].tolist(), f"sample {i}"
        assert sample["labels"].tolist() == window[1:].tolist(), f"sample {i}"


def test_ids_outside_the_vocabulary_fail_the_export(prepare, tmp_path):
    ds = prepare([{"text": t} for t in texts(20)])
    shard = json.loads((ds / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    tokens = np.memmap(ds / shard["tokens"]["path"], "<u2", "r+")
    tokens[5] = 300  # the byte tokenizer has 259 ids: a corrupt shard
    tokens.flush()
    del tokens
    # gristmill.export finds the changed shard by its hash before the exporter reads it...
    with pytest.raises(DatasetError, match=r"00000\.tokens: SHA-256 .*gristmill verify"):
        gristmill.export(ds, tmp_path / "out", to="megatron")
    assert not (tmp_path / "out").exists()
    # ...and the exporter refuses such ids itself, had they been written so in the first place
    # (the manifest then gives the file's hash as it is, and is sealed over it).
    manifest = json.loads((ds / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]["tokens"]
    entry["sha256"] = hashlib.sha256((ds / entry["path"]).read_bytes()).hexdigest()
    write_manifest(ds, manifest)
    with pytest.raises(DatasetError, match=r"token id 300 is outside the vocabulary of 259 ids"):
        gristmill.export(ds, tmp_path / "out", to="megatron")
    assert not (tmp_path / "out").exists()


class FakeDataset:
    """What the exporter reads of a dataset, for sizes no test can prepare."""

    def __init__(self, vocab_size, lengths):
        self.path, self.split = Path("fake"), "train"
        tokens = int(sum(lengths))
        split = {"num_documents": len(lengths), "num_tokens": tokens, "num_loss_tokens": tokens}
        self.manifest = {"tokenizer": {"vocab_size": vocab_size}, "splits": {"train": split}}
        self.documents = type(
            "Reader", (), {"num_documents": len(lengths), "lengths": lambda _: np.array(lengths)}
        )()


def test_what_megatrons_int32_cannot_hold_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"vocabulary of 2,147,483,649 ids does not fit"):
        export_megatron(FakeDataset(2**31 + 1, [3]), tmp_path)
    with pytest.raises(DatasetError, match=r"document 1 has 2,147,483,648 tokens.*--max-doc"):
        export_megatron(FakeDataset(259, [3, 2**31, 5]), tmp_path)
    assert list(tmp_path.iterdir()) == []
