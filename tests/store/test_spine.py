"""The whole first slice: prepare → shards on disk → inspect → open_dataset."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import DatasetError
from gristmill.layout import INCOMPLETE, MANIFEST
from gristmill.serve.samples import IGNORE_INDEX
from gristmill_byte import EOS
from gristmill_sample import stdlib_modules
from tests.helpers import examples, tree_bytes


@pytest.fixture(scope="module")
def qa_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qa") / "ds"
    assert main(["prepare", "sample:stdlib-qa", "-o", str(out), "--val-fraction", "0.05"]) == 0
    return out


def test_prepare_writes_a_complete_dataset(qa_dataset):
    manifest = json.loads((qa_dataset / MANIFEST).read_text())
    assert not (qa_dataset / INCOMPLETE).exists()
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["vocab_size"] == 259
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    records = manifest["provenance"]["sources"][0]["records"]
    assert train["num_documents"] + val["num_documents"] == records > 1000
    assert 0.03 < val["num_documents"] / records < 0.07
    for split in (train, val):
        for shard in split["shards"]:
            for key in ("tokens", "offsets", "mask"):
                assert (qa_dataset / shard[key]["path"]).stat().st_size == shard[key]["bytes"]
    assert not list(qa_dataset.rglob("*.tmp-*"))


def test_open_dataset_serves_samples(qa_dataset):
    ds = gristmill.open_dataset(qa_dataset)
    assert (
        len(ds)
        == json.loads((qa_dataset / MANIFEST).read_text())["splits"]["train"]["num_documents"]
    )
    sample = ds[0]
    assert set(sample) == {"input_ids", "labels", "position_ids", "seq_lens"}
    assert all(a.dtype == np.int64 for a in sample.values())
    ids, labels = sample["input_ids"], sample["labels"]
    assert sample["seq_lens"].tolist() == [len(ids)]
    assert sample["position_ids"].tolist() == list(range(len(ids)))
    assert ids[-1] == EOS and labels[-1] == EOS
    # The prompt (signature) carries no loss; the completion (docstring) does, exactly.
    trained = ids[labels != IGNORE_INDEX]
    text = ds.tokenizer.decode(ids)
    prompt, _, completion = text.partition(":\n")
    assert prompt.startswith("# ")
    assert ds.tokenizer.decode(trained) == completion
    assert len(gristmill.open_dataset(qa_dataset, split="val")) > 0
    truncated = gristmill.open_dataset(qa_dataset, seq_len=16)
    assert max(len(truncated[i]["input_ids"]) for i in range(50)) == 16
    assert next(iter(ds))["input_ids"].tolist() == ids.tolist()
    # DataLoader workers under spawn receive a pickled dataset: it reopens itself there.
    again = pickle.loads(pickle.dumps(ds))
    assert again[0]["labels"].tolist() == labels.tolist() and len(again) == len(ds)


def test_open_dataset_errors_are_clear(qa_dataset, tmp_path):
    with pytest.raises(DatasetError, match="no split 'test'; this dataset has train, val"):
        gristmill.open_dataset(qa_dataset, split="test")
    with pytest.raises(DatasetError, match="no such dataset directory"):
        gristmill.open_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a gristmill dataset"):
        gristmill.open_dataset(tmp_path)
    ds = gristmill.open_dataset(qa_dataset)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_inspect_prints_counts_histogram_and_decoded_samples(qa_dataset, capsys):
    assert main(["inspect", str(qa_dataset), "--decode", "2"]) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "[val]" in out
    assert "tokens │█" in out  # the histogram
    assert out.count("── train document") == 2
    assert "⟦# " in out  # the prompt is shown as carrying no loss
    assert main(["inspect", str(qa_dataset), "--json", "--decode", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    hist = report["splits"]["train"]["histogram"]
    assert sum(b["documents"] for b in hist) == report["splits"]["train"]["documents"]
    assert report["samples"][0]["text"].startswith("⟦# ")


def test_stdlib_round_trips_byte_for_byte(tmp_path):
    out = tmp_path / "ds"
    # Source code keeps its exact code points: no NFC normalisation.
    gristmill.prepare(
        "sample:stdlib", out, tokens_per_shard=1 << 20, normalize=False, progress=False
    )
    ds = gristmill.open_dataset(out)
    _, files = stdlib_modules()
    texts = [t for t in (p.read_text(encoding="utf-8") for p in files) if t.strip()]
    assert ds.documents.num_documents == len(texts)
    assert len(ds.manifest["splits"]["train"]["shards"]) > 5  # crosses shard boundaries
    for index, text in enumerate(texts):
        ids, mask = ds.documents.document(index)
        assert mask is None
        assert ids[-1] == EOS
        assert bytes(ids[:-1].astype(np.uint8)) == text.encode("utf-8")


# Each example prepares and opens a dataset: a quarter of the profile's examples.
@settings(max_examples=examples(0.25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(str.strip),
        min_size=1,
        max_size=20,
    ),
    prompt=st.text(st.characters(exclude_categories=["Cs"]), min_size=1).filter(str.strip),
)
def test_round_trip_and_exact_masks_for_any_text(tmp_path_factory, write_jsonl, texts, prompt):
    out = tmp_path_factory.mktemp("rt") / "ds"
    plain = write_jsonl([{"text": t} for t in texts], "plain.jsonl")
    pairs = write_jsonl([{"prompt": prompt, "completion": t} for t in texts], "pairs.jsonl")
    gristmill.prepare([plain, pairs], out, normalize=False, progress=False)
    ds = gristmill.open_dataset(out)
    tok = ds.tokenizer
    n = len(texts)
    for i, text in enumerate(texts):
        ids, mask = ds.documents.document(i)
        assert tok.decode(ids) == text + "<|endoftext|>"
        ids, mask = ds.documents.document(n + i)
        assert tok.decode(ids) == f"{prompt}\n{text}<|endoftext|>"
        assert tok.decode(ids[mask.astype(bool)]) == text + "<|endoftext|>"


def test_outputs_are_deterministic_and_reruns_are_no_ops(tmp_path, write_jsonl, caplog):
    src = write_jsonl([{"text": f"document {i} " * (i + 1)} for i in range(300)])
    a, b = tmp_path / "a", tmp_path / "b"
    gristmill.prepare(src, a, tokens_per_shard=4096, val_fraction=0.1, progress=False)
    gristmill.prepare(src, b, tokens_per_shard=4096, val_fraction=0.1, progress=False)
    assert tree_bytes(a) == tree_bytes(b)
    before = tree_bytes(a)
    with caplog.at_level("INFO", logger="gristmill"):
        gristmill.prepare(src, a, tokens_per_shard=4096, val_fraction=0.1, progress=False)
    assert "nothing to do" in caplog.text
    assert tree_bytes(a) == before
    with pytest.raises(DatasetError, match="other sources or settings; pass --overwrite"):
        gristmill.prepare(src, a, tokens_per_shard=8192, progress=False)
    gristmill.prepare(src, a, tokens_per_shard=8192, overwrite=True, progress=False)
    assert gristmill.open_dataset(a).manifest["provenance"]["config"]["tokens_per_shard"] == 8192


def test_prepare_refuses_a_foreign_directory(tmp_path, write_jsonl):
    src = write_jsonl([{"text": "x"}])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty and is not a gristmill dataset"):
        gristmill.prepare(src, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_samples_in_a_samplers_order(qa_dataset):
    ds = gristmill.open_dataset(qa_dataset, split="val")
    in_order = [ds[i]["input_ids"].tolist() for i in range(len(ds))]
    assert [s["input_ids"].tolist() for s in ds.samples("sequential")] == in_order
    shuffled = [s["input_ids"].tolist() for s in ds.samples("random", epoch=1)]
    assert shuffled != in_order and sorted(shuffled) == sorted(in_order)
    with pytest.raises(gristmill.GristmillError, match="no option 'world_size': it takes no"):
        list(ds.samples("sequential", world_size=2))


def test_progress_bar_reports_documents(tmp_path, write_jsonl, capsys):
    src = write_jsonl([{"text": f"doc {i}"} for i in range(1500)])
    gristmill.prepare(src, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "prepare: " in err and "1500 docs" in err


def test_documents_are_truncated_with_the_eos_kept_last(tmp_path, write_jsonl):
    texts = write_jsonl([{"text": "x" * 50}, {"text": "short"}], "texts.jsonl")
    pairs = write_jsonl([{"prompt": "p" * 40, "completion": "c"}], "pairs.jsonl")
    manifest = gristmill.prepare(
        [texts, pairs], tmp_path / "out", max_doc_tokens=10, on_error="skip", progress=False
    )
    ds = gristmill.open_dataset(tmp_path / "out")
    assert ds.tokenizer.decode(ds.documents.document(0)[0]) == "x" * 9 + "<|endoftext|>"
    assert ds.tokenizer.decode(ds.documents.document(1)[0]) == "short<|endoftext|>"
    assert manifest["provenance"]["truncated"] == 1
    # The completion fell beyond the limit: nothing left to train on.
    assert manifest["provenance"]["skipped"] == {"no-loss": 1}


@pytest.mark.parametrize("module", ["gristmill", "gristmill.cli"])
def test_the_command_runs_as_a_module(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"gristmill {gristmill.__version__}"
