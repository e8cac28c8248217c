"""``--overwrite`` and starting over remove only what gristmill wrote, never the user's files."""

from __future__ import annotations

import json

import pytest

import gristmill
from gristmill.errors import DatasetError
from gristmill.layout import INCOMPLETE, MANIFEST
from gristmill.store.convert import convert
from gristmill.store.manifest import write_manifest
from tests.helpers import run_gristmill, tree_bytes


@pytest.fixture
def source(write_jsonl):
    return write_jsonl([{"text": f"record {i}"} for i in range(3000)])


def _plant_user_files(out):
    (out / "NOTES.txt").write_text("my notes")
    (out / "mystuff").mkdir()
    (out / "mystuff" / "x").write_text("x")
    (out / "train" / "readme.md").write_text("about the shards")


def test_overwrite_refuses_a_dataset_holding_the_users_files(source, tmp_path):
    out = tmp_path / "ds"
    gristmill.prepare(source, out, task_bytes=5_000, progress=False)
    gristmill.open_dataset(out, seq_len=64, packer="first-fit")  # a cached plan: gristmill's
    _plant_user_files(out)
    before = tree_bytes(out)
    result = run_gristmill("prepare", str(source), "-o", str(out), "--seed", "1", "--overwrite")
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"gristmill: error: {out} holds files gristmill did not write")
    for name in ("NOTES.txt", "mystuff/x", "train/readme.md"):
        assert name in message
    assert "move them out" in message and "choose another -o" in message
    assert tree_bytes(out) == before  # nothing deleted, not even gristmill's own files

    for name in ("NOTES.txt", "mystuff", "train/readme.md"):
        path = out / name
        (path / "x").unlink() if path.is_dir() else None
        path.rmdir() if path.is_dir() else path.unlink()
    manifest = gristmill.prepare(source, out, seed=1, overwrite=True, progress=False)
    assert manifest["provenance"]["config"]["seed"] == 1


def test_an_unfinished_run_with_the_users_files_is_not_started_over(source, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(gristmill.GristmillError):  # stops on a bad option midway: incomplete
        gristmill.prepare(source, out, format="chat", task_bytes=5_000, progress=False)
    assert (out / INCOMPLETE).exists()
    _plant_user_files(out)
    before = tree_bytes(out)
    for overwrite in (False, True):  # a failed run starts over by itself; --overwrite too
        with pytest.raises(DatasetError, match=r"NOTES\.txt.*mystuff/x.*train/readme\.md"):
            gristmill.prepare(source, out, overwrite=overwrite, progress=False)
        assert tree_bytes(out) == before


def test_resuming_keeps_the_users_files_out_of_harms_way(source, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(gristmill.GristmillError):
        gristmill.prepare(source, out, format="chat", task_bytes=5_000, progress=False)
    (out / "train" / "readme.md").write_text("about the shards")
    with pytest.raises(DatasetError, match=r"train/readme\.md"):
        gristmill.prepare(source, out, format="chat", task_bytes=5_000, progress=False)
    assert (out / "train" / "readme.md").read_text() == "about the shards"


def test_overwrite_of_a_clean_dataset_removes_only_its_files(source, tmp_path):
    out = tmp_path / "ds"
    gristmill.prepare(source, out, val_fraction=0.5, task_bytes=5_000, progress=False)
    gristmill.open_dataset(out, seq_len=64, packer="first-fit")
    gristmill.prepare(source, out, task_bytes=5_000, overwrite=True, progress=False)
    clean = tmp_path / "clean"
    gristmill.prepare(source, clean, task_bytes=5_000, progress=False)
    assert tree_bytes(out) == tree_bytes(clean)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())


def test_convert_overwrite_never_replaces_a_directory(source, tmp_path):
    out = tmp_path / "mine.jsonl"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"mine\.jsonl is a directory.*choose another -o"):
        convert(source, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.parametrize("damage", ["a shard entry removed", "splits not an object"])
def test_overwrite_replaces_a_dataset_whose_manifest_is_damaged(source, tmp_path, damage):
    out = tmp_path / "ds"
    gristmill.prepare(source, out, val_fraction=0.5, task_bytes=5_000, progress=False)
    manifest = json.loads((out / MANIFEST).read_text())
    if damage == "a shard entry removed":
        manifest["splits"]["val"]["shards"].pop()
    else:
        manifest["splits"] = None
    (out / MANIFEST).write_text(json.dumps(manifest))
    gristmill.prepare(source, out, task_bytes=5_000, overwrite=True, progress=False)
    clean = tmp_path / "clean"
    gristmill.prepare(source, clean, task_bytes=5_000, progress=False)
    assert tree_bytes(out) == tree_bytes(clean)


@pytest.mark.parametrize("damage", ["a byte changed after prepare", "counts that disagree"])
def test_a_damaged_dataset_is_prepared_again_not_called_up_to_date(source, tmp_path, damage):
    """The same command again, without ``--overwrite``: a dataset whose manifest is damaged (its
    seal broken, or written disagreeing with itself) is prepared again."""
    out = tmp_path / "ds"
    gristmill.prepare(source, out, task_bytes=5_000, progress=False)
    clean = tree_bytes(out)
    if damage == "a byte changed after prepare":  # in a field no reader uses
        data = (out / MANIFEST).read_bytes()
        (out / MANIFEST).write_bytes(data.replace(b'"duplicates": 0', b'"duplicates": 1', 1))
    else:
        manifest = json.loads((out / MANIFEST).read_text())
        manifest["splits"]["train"]["num_tokens"] += 1
        write_manifest(out, manifest)
    assert tree_bytes(out) != clean
    gristmill.prepare(source, out, task_bytes=5_000, progress=False)
    assert tree_bytes(out) == clean
