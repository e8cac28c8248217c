"""What ``open_dataset`` serves can be trusted: a damaged or foreign pack-plan cache is
recomputed with a warning, token ids past the vocabulary never leave gristmill, and samples that
carry no loss are counted, warned about, and left out on request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.dataset import PLANS_DIR
from gristmill.errors import DatasetError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Prompt/completion documents of 6 to 250 tokens, two shards, with loss masks."""
    folder = tmp_path_factory.mktemp("trust")
    src = folder / "qa.jsonl"
    src.write_text(
        "".join(
            json.dumps({"prompt": "q" * (5 + i * 137 % 200), "completion": f"a{i}" * (i % 5 + 1)})
            + "\n"
            for i in range(40)
        )
    )
    gristmill.prepare(src, folder / "ds", tokens_per_shard=2000, progress=False)
    return folder / "ds"


@pytest.fixture
def ds(pristine, tmp_path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(pristine, copy)
    return copy


def _samples(dataset) -> list[list[int]]:
    return [dataset[i]["input_ids"].tolist() for i in range(len(dataset))]


def _plan_file(ds: Path, **options) -> Path:
    gristmill.open_dataset(ds, **options)
    [plan] = (ds / PLANS_DIR).glob("*.npz")
    return plan


# A damaged pack-plan cache


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"not a zip file at all", id="garbage"),
        pytest.param(lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], id="flipped-byte"),
    ],
)
def test_a_damaged_plan_cache_is_recomputed_with_a_warning(ds, caplog, damage):
    options = dict(seq_len=128, packer="first-fit")
    plan = _plan_file(ds, **options)
    expected = _samples(gristmill.open_dataset(ds, **options))
    plan.write_bytes(damage(plan.read_bytes()))
    with caplog.at_level("WARNING", logger="gristmill"):
        served = _samples(gristmill.open_dataset(ds, **options))
    assert served == expected
    assert str(plan) in caplog.text and "recomputed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gristmill"):  # and the cache is whole again
        assert _samples(gristmill.open_dataset(ds, **options)) == expected
    assert not caplog.text


def test_another_datasets_plan_is_recomputed_with_a_warning(ds, tmp_path, write_jsonl, caplog):
    other = tmp_path / "other"
    gristmill.prepare(
        write_jsonl([{"text": "x" * 300} for _ in range(90)], "other.jsonl"),
        other,
        progress=False,
    )
    options = dict(seq_len=128, packer="first-fit")
    mine = _plan_file(ds, **options)
    expected = _samples(gristmill.open_dataset(ds, **options))
    shutil.copy(_plan_file(other, **options), mine)
    with caplog.at_level("WARNING", logger="gristmill"):
        assert _samples(gristmill.open_dataset(ds, **options)) == expected
    assert str(mine) in caplog.text and "does not match" in caplog.text


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda p: {**p, "seg_doc": p["seg_doc"] + 1000}, id="document-past-end"),
        pytest.param(lambda p: {**p, "seg_start": p["seg_start"] + 50}, id="span-past-document"),
        pytest.param(lambda p: {**p, "seg_len": p["seg_len"] * 0}, id="empty-segments"),
        pytest.param(lambda p: {**p, "sample_bounds": p["sample_bounds"][::-1]}, id="bounds"),
        pytest.param(lambda p: {**p, "seg_len": p["seg_len"][:-1]}, id="short-array"),
        pytest.param(lambda p: {**p, "seg_doc": p["seg_doc"].astype(float)}, id="dtype"),
        pytest.param(lambda p: {k: v for k, v in p.items() if k != "seg_start"}, id="missing"),
    ],
)
def test_a_plan_that_does_not_fit_the_dataset_is_recomputed(ds, caplog, change):
    options = dict(seq_len=128, packer="greedy-stream")
    plan = _plan_file(ds, **options)
    expected = _samples(gristmill.open_dataset(ds, **options))
    with np.load(plan) as stored:
        arrays = change({k: stored[k] for k in stored.files})
    with open(plan, "wb") as f:
        np.savez(f, **arrays)
    with caplog.at_level("WARNING", logger="gristmill"):
        assert _samples(gristmill.open_dataset(ds, **options)) == expected
    assert str(plan) in caplog.text


def test_a_plan_larger_than_seq_len_is_recomputed(ds, caplog):
    plan = _plan_file(ds, seq_len=128, packer="first-fit")
    bigger = _plan_file_for(ds, seq_len=256, packer="first-fit")
    expected = _samples(gristmill.open_dataset(ds, seq_len=128, packer="first-fit"))
    shutil.copy(bigger, plan)
    with caplog.at_level("WARNING", logger="gristmill"):
        served = gristmill.open_dataset(ds, seq_len=128, packer="first-fit")
    assert _samples(served) == expected and str(plan) in caplog.text


def _plan_file_for(ds: Path, **options) -> Path:
    before = set((ds / PLANS_DIR).glob("*.npz"))
    gristmill.open_dataset(ds, **options)
    [new] = set((ds / PLANS_DIR).glob("*.npz")) - before
    return new


# Token ids past the vocabulary


def _flip_token(ds: Path, shard: int, at: int, value: int) -> tuple[str, int]:
    """Overwrite token ``at`` of shard ``shard`` in place (as a damaged disk would: the manifest
    is left alone); return the shard's tokens file and the document (of the shard) holding it."""
    manifest = json.loads((ds / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][shard]
    tokens = np.memmap(ds / entry["tokens"]["path"], manifest["dtype"], "r+")
    tokens[at] = value
    tokens.flush()
    offsets = np.fromfile(ds / entry["offsets"]["path"], "<i8")
    return entry["tokens"]["path"], int(np.searchsorted(offsets, at, "right") - 1)


@pytest.mark.parametrize("packer", ["none", "first-fit", "greedy-stream", "concat-chunk"])
@pytest.mark.parametrize("labels", ["unshifted", "shifted"])
def test_an_id_past_the_vocabulary_is_refused_naming_shard_and_document(ds, packer, labels):
    path, doc = _flip_token(ds, shard=1, at=7, value=65393)
    dataset = gristmill.open_dataset(ds, seq_len=256, packer=packer, labels=labels)
    message = rf"{path}: token id 65393 .*document {doc} .*vocabulary size 259.*gristmill verify"
    with pytest.raises(DatasetError, match=message):
        for i in range(len(dataset)):
            dataset[i]
    with pytest.raises(DatasetError, match=message):
        dataset.batch(np.arange(len(dataset)))


def test_an_id_past_the_vocabulary_never_reaches_a_torch_batch(ds):
    pytest.importorskip("torch")
    from gristmill.torch import dataloader

    path, doc = _flip_token(ds, shard=0, at=30, value=259)  # the first id past the vocabulary
    dataset = gristmill.open_dataset(ds, seq_len=256, packer="first-fit")
    for workers in (0, 2):
        loader = dataloader(dataset, batch_size=4, num_workers=workers)
        with pytest.raises(DatasetError, match=rf"{path}: token id 259 .*document {doc} "):
            for _ in loader:
                pass


def test_ids_inside_the_vocabulary_are_served(ds):
    _flip_token(ds, shard=0, at=30, value=258)  # the last id of the vocabulary: valid
    dataset = gristmill.open_dataset(ds, seq_len=256, packer="first-fit")
    assert max(int(dataset[i]["input_ids"].max()) for i in range(len(dataset))) == 258
