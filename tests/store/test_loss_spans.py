"""The loss index (``index/SPLIT.loss``): the runs of loss tokens of a split with masks. The
samples without loss found from it are exactly those the masks give (random masks and plans,
and every packer over a prepared dataset); a dataset prepared without one (an older gristmill)
or with a stale one opens as before, reading the masks; a malformed one is refused."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
import gristmill.serve.dataset as dataset_module
from gristmill.errors import DatasetError
from gristmill.layout import MANIFEST
from gristmill.serve.samples import carry_no_loss, runs_no_loss
from gristmill.store.index import loss_runs, read_loss_runs
from gristmill.store.manifest import INDEX, SEAL, write_sealed


@st.composite
def masked_plans(draw):
    """Documents with masks (0, 1 or another nonzero byte; some shards without a mask), and
    samples of segments cut anywhere inside them."""
    lengths = draw(st.lists(st.integers(1, 30), min_size=1, max_size=12))
    masks = [
        np.array(draw(st.lists(st.sampled_from([0, 0, 1, 7]), min_size=n, max_size=n)), np.uint8)
        for n in lengths
    ]
    segments = draw(st.lists(st.integers(1, 4), min_size=1, max_size=8))
    seg = []
    for _ in range(sum(segments)):
        doc = draw(st.integers(0, len(lengths) - 1))
        start = draw(st.integers(0, lengths[doc] - 1))
        seg.append((doc, start, draw(st.integers(1, lengths[doc] - start))))
    cuts = (
        sorted(draw(st.sets(st.integers(1, len(lengths) - 1), max_size=3)))
        if len(lengths) > 1
        else []
    )
    unmasked = draw(st.sets(st.integers(0, len(cuts))))
    return lengths, masks, seg, segments, cuts, unmasked


@settings(max_examples=400, deadline=None)
@given(masked_plans(), st.booleans())
def test_the_runs_give_the_samples_without_loss_the_masks_give(case, restart):
    lengths, masks, seg, segments, cuts, unmasked = case
    shards = np.split(np.arange(len(lengths)), cuts)
    for k in unmasked:  # a shard without a mask: every token carries loss
        for d in shards[k]:
            masks[d] = np.ones(lengths[d], np.uint8)
    # The index as prepare writes it: each shard's runs, in the split's token positions.
    runs, at = [], 0
    for k, docs in enumerate(shards):
        shard_mask = np.concatenate([masks[d] for d in docs])
        runs.append(
            np.array([[at, at + len(shard_mask)]]) if k in unmasked else loss_runs(shard_mask) + at
        )
        at += len(shard_mask)
    runs = np.concatenate(runs).astype(np.int64)
    doc_at = np.cumsum(lengths) - np.array(lengths)
    docs, starts, lens = (np.array(column, np.int64) for column in zip(*seg))
    mask = np.concatenate([masks[d][s : s + n] for d, s, n in seg])
    expected = carry_no_loss(mask, lens, segments, restart=restart)
    got = runs_no_loss(runs, doc_at[docs] + starts, lens, segments, restart=restart)
    assert got.tolist() == expected.tolist()


def test_runs_of_a_mask():
    mask = np.array([0, 1, 1, 0, 3, 0, 0, 1], np.uint8)
    assert loss_runs(mask).tolist() == [[1, 3], [4, 5], [7, 8]]
    assert loss_runs(np.zeros(0, np.uint8)).shape == (0, 2)


SFT = [
    {"prompt": f"question {i}: " + "why " * (i % 11), "completion": " so" * (i % 5 + 1)}
    for i in range(150)
]
CHAT = [
    {
        "messages": [
            {"role": "user", "content": "hi " * (i % 7 + 1)},
            {"role": "assistant", "content": "yes " * (i % 4 + 1)},
            {"role": "user", "content": "and " * (i % 3 + 1)},
            {"role": "assistant", "content": "no " * (i % 6 + 1)},
        ]
    }
    for i in range(150)
]
TEXT = [{"text": f"plain {i} " * (i % 9 + 1)} for i in range(60)]
CASES = [
    {"packer": packer, "overlong": overlong, "seq_len": seq_len, "restart": restart}
    for packer in ("none", "first-fit", "window", "concat-chunk")
    for overlong, seq_len, restart in (
        ("truncate", 12, None),
        ("truncate-left", 20, None),
        ("fragment", 16, False),
        ("truncate", 64, True),
    )
]


@pytest.fixture(scope="module")
def masked(prepared_dataset) -> Path:
    """Prompt/completion pairs, chats and plain text (a shard without a mask), many shards."""
    return prepared_dataset({"sft": SFT, "chat": CHAT, "text": TEXT}, tokens_per_shard=700)


def _reading_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "loss_entry", lambda *args: None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_a_prepared_dataset_drops_and_counts_what_the_masks_say(masked, case, monkeypatch):
    index = gristmill.open_dataset(masked, **case, no_loss="drop")
    kept = gristmill.open_dataset(masked, **case)
    _reading_masks(monkeypatch)
    shutil.rmtree(masked / ".gristmill-plans", ignore_errors=True)
    read = gristmill.open_dataset(masked, **case, no_loss="drop")
    assert index.samples_without_loss == read.samples_without_loss == kept.samples_without_loss
    assert np.array_equal(index.plan.seg_doc, read.plan.seg_doc)
    assert np.array_equal(index.plan.sample_bounds, read.plan.sample_bounds)
    shutil.rmtree(masked / ".gristmill-plans", ignore_errors=True)


def _without_loss_index(source: Path, to: Path, change=None) -> Path:
    """A copy of ``source`` as a gristmill without loss indexes wrote it (``change`` given: with
    its manifest's loss entries changed so instead)."""
    shutil.copytree(source, to, ignore=shutil.ignore_patterns(".gristmill-*"))
    manifest = json.loads((to / MANIFEST).read_text())
    manifest.pop(SEAL)
    for entry in manifest[INDEX].values():
        if change is None:
            (to / entry.pop("loss")["path"]).unlink()
        else:
            change(entry["loss"])
    write_sealed(to, manifest)
    return to


def test_a_dataset_without_loss_index_opens_as_before(masked, tmp_path, caplog):
    old = _without_loss_index(masked, tmp_path / "old")
    assert not list((old / "index").glob("*.loss"))
    shards = json.loads((masked / MANIFEST).read_text())["splits"]["train"]["shards"]
    assert {shard["mask"] is None for shard in shards} == {True, False}
    for case in CASES[:6]:
        with caplog.at_level(logging.INFO, logger="gristmill"):
            got = gristmill.open_dataset(old, **case, no_loss="drop")
        expected = gristmill.open_dataset(masked, **case, no_loss="drop")
        assert got.samples_without_loss == expected.samples_without_loss
        assert np.array_equal(got.plan.seg_doc, expected.plan.seg_doc)
        assert got.batch(np.arange(len(got))) is not None
    assert gristmill.open_dataset(old, **CASES[0]).samples_without_loss > 0
    said = [r.message for r in caplog.records if "no loss index" in r.message]
    assert len(said) == 1 and "reads the masks of its" in said[0]  # once a process


def test_a_stale_loss_index_is_said_and_the_masks_read(masked, tmp_path, caplog):
    stale = _without_loss_index(
        masked, tmp_path / "stale", lambda e: e.update(masks_digest="0" * 64)
    )
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        got = gristmill.open_dataset(stale, **CASES[0])
    assert any("made of other masks than the manifest lists" in r.message for r in caplog.records)
    assert (
        got.samples_without_loss == gristmill.open_dataset(masked, **CASES[0]).samples_without_loss
    )


@pytest.mark.parametrize(
    "runs, problem",
    [
        ([[3, 5], [4, 6]], "not ascending"),
        ([[3, 3]], "not ascending"),
        ([[0, 10**9]], "outside the split"),
    ],
)
def test_a_malformed_loss_index_is_refused(tmp_path, runs, problem):
    data = np.array(runs, "<i8").tobytes()
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "train.loss").write_bytes(data)
    entry = {
        "path": "index/train.loss",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    with pytest.raises(DatasetError, match=problem):
        read_loss_runs(tmp_path, entry, 100)


def test_verify_checks_the_loss_index_against_the_masks(masked, tmp_path):
    from gristmill.store.verify import verify

    assert verify(masked) == []
    copy = tmp_path / "changed"
    shutil.copytree(masked, copy, ignore=shutil.ignore_patterns(".gristmill-*"))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest.pop(SEAL)
    loss = manifest[INDEX]["train"]["loss"]
    runs = np.fromfile(copy / loss["path"], "<i8").reshape(-1, 2)
    runs[1, 1] -= 1  # one token less of loss: still well formed
    data = runs.astype("<i8").tobytes()
    (copy / loss["path"]).write_bytes(data)
    loss["sha256"] = hashlib.sha256(data).hexdigest()
    write_sealed(copy, manifest)
    [problem] = verify(copy)
    assert problem.where == loss["path"] and "differs from the runs" in problem.message
    loss["masks_digest"] = "0" * 64
    write_sealed(copy, manifest)
    [problem] = verify(copy)
    assert problem.where == loss["path"] and "made of other masks" in problem.message
