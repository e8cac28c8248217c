"""Splits: a test split beside val by the same content hash, and the sources' own splits kept
(files named train/val/test, a Hub dataset's and a saved DatasetDict's), through Python, the
command line and config files."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import DataError, DatasetError
from gristmill.ingest.encoding import digest
from gristmill.ingest.splits import assign_splits, named_by
from tests.helpers import run_gristmill, tree_bytes
from tests.serve.test_export import NpyPlugin

HAS_DATASETS = importlib.util.find_spec("datasets") is not None
needs_datasets = pytest.mark.skipif(
    not HAS_DATASETS, reason="datasets is not installed (pip install 'gristmill[hub]')"
)


def _texts(count: int, tag: str = "doc") -> list[str]:
    rng = random.Random(tag)
    words = ["oak", "elm", "ash", "yew", "fir", "box", "bay", "fig"]
    return [
        f"{tag} {i}: " + " ".join(rng.choices(words, k=rng.randint(2, 30))) for i in range(count)
    ]


def _write(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _decoded(out: Path, split: str) -> list[str]:
    """The texts of a split's documents, in order (the byte tokenizer adds its end token)."""
    ds = gristmill.open_dataset(out, split)
    return [
        ds.tokenizer.decode(ds.documents.document(i)[0]).removesuffix("<|endoftext|>")
        for i in range(ds.documents.num_documents)
    ]


def _counts(manifest: dict) -> dict[str, int]:
    return {name: entry["num_documents"] for name, entry in manifest["splits"].items()}


# --- the fractions -------------------------------------------------------------------------------


@given(
    st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=200, unique=True),
    st.randoms(use_true_random=False),
    st.floats(0, 0.6),
    st.floats(0, 0.4),
    st.integers(-(2**63), 2**63 - 1),
)
def test_a_documents_split_depends_on_its_content_alone(digests, rng, val, test, seed):
    chosen = dict(zip(digests, assign_splits(digests, seed, val, test)))
    shuffled = list(digests)
    rng.shuffle(shuffled)
    again = dict(zip(shuffled, assign_splits(shuffled, seed, val, test)))
    assert chosen == again  # same content, same split, whatever the order
    # Each fraction moves only its own split's documents: val as with val alone, test as with
    # test alone; the two never overlap.
    alone_val = dict(zip(digests, assign_splits(digests, seed, val)))
    alone_test = dict(zip(digests, assign_splits(digests, seed, 0.0, test)))
    for d in digests:
        assert (chosen[d] == "val") == (alone_val[d] == "val")
        assert (chosen[d] == "test") == (alone_test[d] == "test")
    assert set(chosen.values()) <= {"train", "val", "test"}


def test_the_shares_follow_the_fractions():
    digests = [digest(np.asarray([i, i >> 8], np.uint32), None) for i in range(20_000)]
    names, counts = np.unique(assign_splits(digests, 7, 0.1, 0.25), return_counts=True)
    shares = dict(zip(names.tolist(), (counts / len(digests)).tolist()))
    assert shares["val"] == pytest.approx(0.1, abs=0.01)
    assert shares["test"] == pytest.approx(0.25, abs=0.01)


def test_a_test_split_beside_val(tmp_path):
    texts = _texts(400)
    src = _write(tmp_path / "corpus.jsonl", texts)
    both = gristmill.prepare(
        src, tmp_path / "both", val_fraction=0.1, test_fraction=0.2, progress=False
    )
    assert list(both["splits"]) == ["train", "val", "test"]
    counts = _counts(both)
    assert sum(counts.values()) == 400 and 20 < counts["test"] < 140 and 10 < counts["val"] < 80
    splits = {name: _decoded(tmp_path / "both", name) for name in ("train", "val", "test")}
    assert sorted(t for part in splits.values() for t in part) == sorted(texts)
    # The val documents are those a run with val alone chooses, the test ones those a run
    # with test alone chooses.
    gristmill.prepare(src, tmp_path / "val", val_fraction=0.1, progress=False)
    gristmill.prepare(src, tmp_path / "test", test_fraction=0.2, progress=False)
    assert _decoded(tmp_path / "val", "val") == splits["val"]
    assert _decoded(tmp_path / "test", "test") == splits["test"]
    assert set(json.loads((tmp_path / "test" / "manifest.json").read_text())["splits"]) == {
        "train",
        "test",
    }
    # The source order does not move a document: the same texts in reverse.
    reverse = _write(tmp_path / "reverse.jsonl", texts[::-1])
    gristmill.prepare(
        reverse, tmp_path / "rev", val_fraction=0.1, test_fraction=0.2, progress=False
    )
    assert sorted(_decoded(tmp_path / "rev", "test")) == sorted(splits["test"])


def test_the_fractions_cannot_exceed_one(tmp_path, capsys):
    src = _write(tmp_path / "corpus.jsonl", _texts(5))
    with pytest.raises(DataError, match=r"val_fraction \+ test_fraction must be at most 1"):
        gristmill.prepare(src, tmp_path / "out", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataError, match=r"test_fraction must be in \[0, 1\), got 1.0"):
        gristmill.prepare(src, tmp_path / "out", test_fraction=1.0)
    argv = ["prepare", str(src), "-o", str(tmp_path / "out"), "--val-fraction", "0.5"]
    assert main([*argv, "--test-fraction", "0.7"]) == 2
    assert "got 0.5 + 0.7" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_runs_without_the_new_options_are_as_before(tmp_path):
    src = _write(tmp_path / "corpus.jsonl", _texts(50))
    first = gristmill.prepare(src, tmp_path / "out", val_fraction=0.2, progress=False)
    assert "test_fraction" not in first["provenance"]["config"]
    assert "keep_source_splits" not in first["provenance"]["config"]
    # Naming the defaults is the same run: the dataset is up to date.
    again = gristmill.prepare(
        src,
        tmp_path / "out",
        val_fraction=0.2,
        test_fraction=0.0,
        keep_source_splits=False,
        progress=False,
    )
    assert again["generation"] == first["generation"]


def test_the_test_split_is_served_exported_verified_and_inspected(
    tmp_path, capsys, gristmill_register
):
    gristmill_register(NpyPlugin())
    src = _write(tmp_path / "corpus.jsonl", _texts(200))
    out = tmp_path / "out"
    manifest = gristmill.prepare(src, out, test_fraction=0.25, progress=False)
    test = gristmill.open_dataset(out, split="test", seq_len=64, packer="first-fit")
    assert sum(len(test[i]["seq_lens"]) for i in range(len(test))) == _counts(manifest)["test"]
    assert main(["verify", str(out)]) == 0
    exported = gristmill.export(out, tmp_path / "npy", to="npy", splits=["test"])
    assert (exported / "test.npy").exists() and not (exported / "train.npy").exists()
    capsys.readouterr()
    assert main(["inspect", str(out), "--split", "test", "--decode", "1"]) == 0
    printed = capsys.readouterr().out
    assert "[test] " in printed and "── test document 0" in printed
    with pytest.raises(DatasetError, match=r"no split 'val'.*--val-fraction F"):
        gristmill.open_dataset(out, split="val")
    with pytest.raises(DatasetError, match="gristmill calls the validation split val"):
        gristmill.open_dataset(out, split="validation")


def test_a_dataset_with_a_test_split_is_replaced_whole(tmp_path):
    src = _write(tmp_path / "corpus.jsonl", _texts(60))
    out = tmp_path / "out"
    gristmill.prepare(src, out, test_fraction=0.3, progress=False)
    # Its test/ folder is gristmill's own: --overwrite replaces it without calling it foreign.
    gristmill.prepare(src, out, val_fraction=0.3, overwrite=True, progress=False)
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["index", "tokenizer", "train", "val"]


# --- the sources' own splits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train.jsonl", "train"),
        ("Train.jsonl.gz", "train"),
        ("train-00000-of-00002.parquet", "train"),
        ("val.csv", "val"),
        ("validation.jsonl", "val"),
        ("dev_2.jsonl", "val"),
        ("valid.json", "val"),
        ("test", "test"),
        ("test.arrow", "test"),
        ("trainer.jsonl", None),
        ("notes.jsonl", None),
        ("contest.jsonl", None),
    ],
)
def test_a_name_begins_with_its_split(name, split):
    assert named_by(f"/data/test/{name}") == split  # the folders above it do not count


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """A folder of files named after their splits, and one named after none."""
    folder = tmp_path / "data"
    _write(folder / "train.jsonl", _texts(60, "train"))
    _write(folder / "validation.jsonl", _texts(10, "validation"))
    _write(folder / "test-00000-of-00001.jsonl", _texts(12, "test"))
    _write(folder / "extra.jsonl", _texts(20, "extra"))
    return folder


def test_files_named_after_their_splits_keep_them(split_folder, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="gristmill"):
        manifest = gristmill.prepare(split_folder, out, keep_source_splits=True, progress=False)
    assert _counts(manifest) == {"train": 80, "val": 10, "test": 12}
    assert _decoded(out, "val") == _texts(10, "validation")
    assert _decoded(out, "test") == _texts(12, "test")
    assert [s.get("split") for s in manifest["provenance"]["sources"]] == [
        None,  # extra.jsonl: no split of its own, so train
        "test",
        "train",
        "val",
    ]
    assert manifest["provenance"]["config"]["keep_source_splits"] is True
    assert "own splits (each named in the manifest): train 1, val 1, test 1; 1 with none (" in (
        caplog.text
    )
    assert "extra.jsonl) go to train" in caplog.text
    # Without the option the names mean nothing: one train split.
    plain = gristmill.prepare(split_folder, tmp_path / "plain", progress=False)
    assert _counts(plain) == {"train": 102}


def test_fractions_share_out_train_and_sources_of_no_split(split_folder, tmp_path):
    (split_folder / "validation.jsonl").unlink()
    out = tmp_path / "out"
    manifest = gristmill.prepare(
        split_folder, out, keep_source_splits=True, val_fraction=0.3, progress=False
    )
    counts = _counts(manifest)
    assert counts["test"] == 12 and counts["train"] + counts["val"] == 80 and counts["val"] > 5
    assert _decoded(out, "test") == _texts(12, "test")  # a split of its own is never shared out
    assert set(_decoded(out, "val")) < set(_texts(60, "train") + _texts(20, "extra"))


def test_a_fraction_for_a_split_a_source_has_is_refused(split_folder, tmp_path):
    with pytest.raises(DataError, match=r"validation.jsonl is a val split of its own, and "):
        gristmill.prepare(split_folder, tmp_path / "o", keep_source_splits=True, val_fraction=0.1)
    with pytest.raises(DataError, match=r"test-00000-of-00001.jsonl is a test split of its own"):
        gristmill.prepare(split_folder, tmp_path / "o", keep_source_splits=True, test_fraction=0.1)
    assert not (tmp_path / "o").exists()


def test_keeping_splits_of_sources_that_have_none_is_refused(tmp_path):
    src = _write(tmp_path / "corpus.jsonl", _texts(5))
    with pytest.raises(DataError, match="keep_source_splits: no source has splits of its own"):
        gristmill.prepare([src, "sample:stdlib"], tmp_path / "o", keep_source_splits=True)


def test_any_worker_count_writes_the_same_splits(split_folder, tmp_path):
    # val kept from validation.jsonl; test shared out of train.jsonl and extra.jsonl by hash.
    (split_folder / "test-00000-of-00001.jsonl").unlink()
    options = dict(keep_source_splits=True, test_fraction=0.25, task_bytes=600, progress=False)
    trees = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifest = gristmill.prepare(split_folder, out, workers=workers, **options)
        trees.append(tree_bytes(out))
    assert trees[0] == trees[1]
    assert len(manifest["splits"]["train"]["shards"]) > 3  # really cut into several tasks
    assert set(manifest["splits"]) == {"train", "val", "test"}


def test_the_command_line_and_a_config_file(split_folder, tmp_path):
    done = run_gristmill(
        "prepare", str(split_folder), "-o", str(tmp_path / "cli"), "--keep-source-splits"
    )
    assert done.returncode == 0, done.stderr
    shown = run_gristmill("inspect", str(tmp_path / "cli"), "--split", "val", "--decode", "1")
    assert shown.returncode == 0, shown.stderr
    assert f"source {split_folder / 'validation.jsonl'} [val]: 10 records" in shown.stdout
    assert "── val document 0" in shown.stdout
    config = tmp_path / "run.toml"
    config.write_text(
        f'[prepare]\nsources = ["{split_folder / "extra.jsonl"}"]\noutput = "{tmp_path / "cfg"}"\n'
        "test_fraction = 0.3\nval_fraction = 0.2\n"
    )
    done = run_gristmill("prepare", "--config", str(config))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "cfg" / "manifest.json").read_text())
    assert manifest["provenance"]["config"]["test_fraction"] == 0.3
    assert sum(_counts(manifest).values()) == 20
    assert set(manifest["splits"]) == {"train", "val", "test"}
    config.write_text(
        f'[prepare]\nsources = ["{split_folder}"]\noutput = "{tmp_path / "cfg2"}"\n'
        "keep_source_splits = true\n"
    )
    config_run = gristmill.from_config(config)
    assert _counts(config_run.prepare()) == {"train": 80, "val": 10, "test": 12}
    config.write_text("[prepare]\nsources = ['a.jsonl']\noutput = 'o'\nkeep_source_splits = 1\n")
    done = run_gristmill("prepare", "--config", str(config))
    assert done.returncode == 2 and "keep_source_splits" in done.stderr


# --- sources with named splits -------------------------------------------------------------------


@needs_datasets
def test_a_hub_datasets_splits(tmp_path):
    folder = tmp_path / "hubdata"
    _write(folder / "train.jsonl", _texts(30, "train"))
    _write(folder / "validation.jsonl", _texts(8, "validation"))
    _write(folder / "test.jsonl", _texts(9, "test"))
    out = tmp_path / "out"
    manifest = gristmill.prepare(f"hub:{folder}", out, keep_source_splits=True, progress=False)
    assert _counts(manifest) == {"train": 30, "val": 8, "test": 9}
    assert [s["spec"] for s in manifest["provenance"]["sources"]] == [
        f"hub:{folder}",
        f"hub:{folder}#validation",
        f"hub:{folder}#test",
    ]
    assert _decoded(out, "val") == _texts(8, "validation")
    # A split named in the spec is the only one read, into its own split.
    one = gristmill.prepare(
        f"hub:{folder}#validation", tmp_path / "one", keep_source_splits=True, progress=False
    )
    assert _counts(one) == {"train": 0, "val": 8}
    # Without the option, hub: reads train alone, as it always did.
    assert _counts(gristmill.prepare(f"hub:{folder}", tmp_path / "t", progress=False)) == {
        "train": 30
    }


@needs_datasets
def test_a_saved_dataset_dicts_splits(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    parts = {"train": 30, "validation": 7, "test": 5}
    saved = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_list([{"text": t} for t in _texts(n, name)])
            for name, n in parts.items()
        }
    )
    saved.save_to_disk(str(tmp_path / "dd"))
    out = tmp_path / "out"
    manifest = gristmill.prepare(tmp_path / "dd", out, keep_source_splits=True, progress=False)
    assert _counts(manifest) == {"train": 30, "val": 7, "test": 5}
    assert _decoded(out, "test") == _texts(5, "test")
    named = gristmill.prepare(
        tmp_path / "dd",
        tmp_path / "named",
        keep_source_splits=True,
        source_options={"split": "test"},
        progress=False,
    )
    assert _counts(named) == {"train": 0, "test": 5}
    odd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": "a"}]),
            "unsupervised": datasets.Dataset.from_list([{"text": "b"}]),
        }
    )
    odd.save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DataError, match=r"odd: its split 'unsupervised' has no place in a dataset"):
        gristmill.prepare(tmp_path / "odd", tmp_path / "o", keep_source_splits=True)
