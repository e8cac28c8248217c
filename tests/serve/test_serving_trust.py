"""What ``open_dataset`` serves can be trusted: a damaged or foreign pack-plan cache is
recomputed with a warning, token ids past the vocabulary never leave gristmill, and samples that
carry no loss are counted, warned about, and left out on request."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError
from gristmill.layout import PLANS_DIR
from gristmill.store.manifest import write_manifest
from tests.helpers import run_gristmill


@pytest.fixture(scope="module")
def pristine(prepared_dataset) -> Path:
    """Prompt/completion documents of 44 to 95 tokens, two shards, with loss masks: in 17 of the
    40 the prompt and its separator fill 64 tokens or more."""
    records = [
        {"prompt": "q" * (40 + i * 37 % 40), "completion": f"a{i}" * (i % 5 + 1)} for i in range(40)
    ]
    return prepared_dataset({"qa": records}, tokens_per_shard=2000)  # beside it, qa.jsonl


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
    """Set token ``at`` of shard ``shard`` to ``value`` and record the file's new hash in the
    manifest, as a dataset written wrong (rather than damaged afterwards, which the hash check
    catches first) would be; return the shard's tokens file and the document (of the shard)
    holding the token."""
    manifest = json.loads((ds / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][shard]
    path = ds / entry["tokens"]["path"]
    tokens = np.fromfile(path, manifest["dtype"])
    tokens[at] = value
    tokens.tofile(path)
    entry["tokens"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    write_manifest(ds, manifest)
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


# Samples that carry no loss

PACKERS = ["none", "first-fit", "greedy-stream", "concat-chunk", "window"]


def _without_loss(dataset) -> list[int]:
    """The samples whose every label is -100, by building them."""
    return [i for i in range(len(dataset)) if (dataset[i]["labels"] == -100).all()]


def test_samples_without_loss_are_counted_and_warned_about(ds, caplog):
    with caplog.at_level("WARNING", logger="gristmill"):
        dataset = gristmill.open_dataset(ds, seq_len=64)
    empty = _without_loss(dataset)
    assert len(empty) == 17 and len(dataset) == 40  # their completions cut away
    assert dataset.samples_without_loss == 17
    assert "17 of 40 samples carry no loss" in caplog.text and str(ds) in caplog.text
    assert "no_loss='drop'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gristmill"):
        whole = gristmill.open_dataset(ds, seq_len=512)
    assert whole.samples_without_loss == 0 and not caplog.text


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize("overlong", ["truncate", "fragment"])
@pytest.mark.parametrize("restart", [True, False])
def test_no_loss_drop_leaves_out_exactly_the_samples_without_loss(ds, packer, overlong, restart):
    options = dict(seq_len=48, packer=packer, overlong=overlong, restart=restart)
    kept = gristmill.open_dataset(ds, **options)
    empty = _without_loss(kept)
    assert kept.samples_without_loss == len(empty)
    dropped = gristmill.open_dataset(ds, no_loss="drop", **options)
    assert dropped.samples_without_loss == len(empty) and _without_loss(dropped) == []
    wanted = [s for i, s in enumerate(_samples(kept)) if i not in set(empty)]
    assert _samples(dropped) == wanted
    assert dropped.identity != kept.identity  # a loader's state tells them apart
    again = gristmill.open_dataset(ds, no_loss="drop", **options)  # from the plan cache
    assert _samples(again) == wanted and again.samples_without_loss == len(empty)


def test_no_loss_drop_with_shifted_labels(ds):
    options = dict(seq_len=64, packer="first-fit", labels="shifted")
    dataset = gristmill.open_dataset(ds, no_loss="drop", **options)
    assert dataset.samples_without_loss > 0 and _without_loss(dataset) == []
    pickled = pickle.loads(pickle.dumps(dataset))  # as DataLoader workers receive it
    assert pickled.no_loss == "drop" and _samples(pickled) == _samples(dataset)


def test_an_unknown_no_loss_policy_is_refused(ds):
    with pytest.raises(DatasetError, match="no_loss must be one of keep, drop, got 'skip'"):
        gristmill.open_dataset(ds, seq_len=64, no_loss="skip")


def test_text_without_masks_has_no_loss_only_in_one_token_sequences(tmp_path, write_jsonl):
    src = write_jsonl([{"text": "x" * (i % 7 + 1)} for i in range(30)])
    gristmill.prepare(src, tmp_path / "ds", progress=False)
    for packer in PACKERS:
        dataset = gristmill.open_dataset(tmp_path / "ds", seq_len=4, packer=packer)
        assert dataset.samples_without_loss == len(_without_loss(dataset))


def test_inspect_counts_samples_without_loss(ds):
    expected = {
        (packer, seq_len): gristmill.open_dataset(ds, seq_len=seq_len, packer=packer)
        for packer in PACKERS
        for seq_len in (64, 512)
    }
    result = run_gristmill("inspect", str(ds), "--json", "--seq-len", "64,512")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["splits"]["train"]["packing"]
    assert {(r["packer"], r["seq_len"]): r["samples_without_loss"] for r in rows} == {
        key: len(_without_loss(dataset)) for key, dataset in expected.items()
    }
    text = run_gristmill("inspect", str(ds), "--seq-len", "64")
    line = next(ln for ln in text.stdout.splitlines() if "packing none @ 64:" in ln)
    assert "17 samples without loss" in line


@pytest.mark.parametrize("packer", ["none", "first-fit", "greedy-stream"])
def test_truncate_left_keeps_the_completion_of_a_long_document(ds, packer):
    whole = gristmill.open_dataset(ds)
    ends = sorted(whole[i]["input_ids"][-64:].tolist() for i in range(len(whole)))
    dataset = gristmill.open_dataset(ds, seq_len=64, packer=packer, overlong="truncate-left")
    assert dataset.samples_without_loss == 0 and _without_loss(dataset) == []
    served = []
    for sample in dataset:
        for piece in np.split(sample["input_ids"], np.cumsum(sample["seq_lens"])[:-1]):
            served.append(piece.tolist())
    assert sorted(served) == ends


def test_a_stream_truncates_from_the_left_as_open_dataset_does(ds, pristine):
    source = pristine.parent / "qa.jsonl"
    options = dict(seq_len=64, packer="none", overlong="truncate-left")
    streamed = [sample["input_ids"].tolist() for sample in gristmill.stream(source, **options)]
    assert sorted(streamed) == sorted(_samples(gristmill.open_dataset(ds, **options)))


def test_a_plan_is_synced_before_it_is_renamed_into_place(ds, monkeypatch):
    """The real calls, watched with a profiling hook: the plan's data reaches the disk before
    its name does, and the rename before ``open_dataset`` returns."""
    monkeypatch.setenv("GRISTMILL_FSYNC", "1")
    calls = []

    def watch(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") in ("fsync", "replace"):
            calls.append((arg.__name__, frame.f_code.co_name))

    sys.setprofile(watch)
    try:
        gristmill.open_dataset(ds, seq_len=128, packer="first-fit")
    finally:
        sys.setprofile(None)
    assert calls == [
        ("fsync", "write_atomic"),  # the temporary file
        ("replace", "write_atomic"),
        ("fsync", "sync_directory"),  # the directory holding the new name
    ]
