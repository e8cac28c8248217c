"""Corruption: each case is detected by ``gristmill verify`` with the file and what is wrong, and
``open_dataset`` refuses what it cannot serve correctly, never a crash deep in numpy."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError
from gristmill.store.manifest import write_manifest
from gristmill.store.verify import verify
from tests.helpers import run_gristmill


@pytest.fixture(scope="module")
def pristine(prepared_dataset):
    """A dataset of two shards with loss masks (prompt/completion)."""
    records = [
        {"prompt": f"question {i}?", "completion": f"answer {i}" * (i % 7 + 1)} for i in range(300)
    ]
    return prepared_dataset(records, tokens_per_shard=4000)


@pytest.fixture
def ds(pristine, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(pristine, copy)
    return copy


def _manifest(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def _save(ds: Path, manifest: dict) -> None:
    """Write ``manifest`` sealed, as a writer that got it wrong would (not edited after)."""
    write_manifest(ds, manifest)


def _shard(ds: Path, index: int = 0) -> dict:
    return _manifest(ds)["splits"]["train"]["shards"][index]


def _rewrite(ds: Path, key: str, change) -> str:
    """Change shard 0's ``key`` file with ``change(array)`` and record its new size and sum in
    the manifest, as a dataset written wrong (rather than damaged afterwards) would be."""
    manifest = _manifest(ds)
    entry = manifest["splits"]["train"]["shards"][0][key]
    dtype = {"tokens": manifest["dtype"], "offsets": "<i8", "mask": "u1"}[key]
    path = ds / entry["path"]
    array = change(np.fromfile(path, dtype))
    array.astype(dtype).tofile(path)
    data = path.read_bytes()
    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _save(ds, manifest)
    return entry["path"]


def _read_all(ds: Path) -> None:
    """Open ``ds`` and read every sample: a shard's files are checked at its first read."""
    dataset = gristmill.open_dataset(ds)
    dataset.batch(np.arange(len(dataset)))


def _problems(ds: Path) -> list[tuple[str, str]]:
    return [tuple(p) for p in verify(ds)]


def test_a_whole_dataset_verifies(pristine):
    assert len(_manifest(pristine)["splits"]["train"]["shards"]) >= 2
    assert verify(pristine) == []
    done = run_gristmill("verify", str(pristine))
    assert done.returncode == 0 and "OK" in done.stdout


def test_a_flipped_byte(ds):
    path = ds / _shard(ds)["tokens"]["path"]
    data = bytearray(path.read_bytes())
    data[7] ^= 0x10
    path.write_bytes(bytes(data))
    [(where, message)] = _problems(ds)
    assert where == _shard(ds)["tokens"]["path"] and "SHA-256" in message
    done = run_gristmill("verify", str(ds), "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not report["ok"]
    assert report["problems"][0]["where"].endswith(".tokens")
    done = run_gristmill("verify", str(ds))
    assert done.returncode == 1 and "(the content changed)" in done.stdout


def test_a_truncated_shard(ds):
    path = ds / _shard(ds, 1)["offsets"]["path"]
    path.write_bytes(path.read_bytes()[:-8])
    [(where, message)] = _problems(ds)
    assert where.endswith(".offsets") and "truncated" in message
    with pytest.raises(DatasetError, match=r"offsets"):
        _read_all(ds)


def test_a_missing_shard(ds):
    (ds / _shard(ds, 1)["tokens"]["path"]).unlink()
    [(where, message)] = _problems(ds)
    assert where == _shard(ds, 1)["tokens"]["path"] and message == "missing"
    with pytest.raises(DatasetError, match=r"tokens"):
        _read_all(ds)


def test_a_manifest_from_another_dataset(ds, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"other {i}"}) + "\n" for i in range(300)))
    gristmill.prepare(other, tmp_path / "other", tokens_per_shard=4000, progress=False)
    shutil.copy(tmp_path / "other" / "manifest.json", ds / "manifest.json")
    problems = _problems(ds)
    shard_files = (".tokens", ".offsets", ".mask", ".loss")  # .loss: this one's, not listed there
    assert problems and all(w.endswith(shard_files) for w, _ in problems)
    with pytest.raises(DatasetError):
        _read_all(ds)


def _refused(ds: Path, problem: str) -> None:
    """Opening reads every offsets file (the ``none`` packer's plan is never cached, and this
    copy has no cached first-fit plan yet) and names the shard, what is wrong and the remedy."""
    for options in ({}, {"seq_len": 64, "packer": "first-fit"}):
        with pytest.raises(DatasetError, match=r"offsets") as refused:
            gristmill.open_dataset(ds, **options)
        assert str(refused.value).startswith(problem)
        assert str(refused.value).endswith(f"; run `gristmill verify {ds.resolve()}`")


def test_an_index_that_points_past_the_end(ds):
    where = _rewrite(ds, "offsets", lambda o: np.where(np.arange(len(o)) == len(o) - 1, o + 5, o))
    [(at, message)] = _problems(ds)
    assert at.startswith(where + "[") and "the last offset" in message
    tokens = _shard(ds)["num_tokens"]
    _refused(ds, f"{where}: the last offset is {tokens + 5} but the shard has {tokens} tokens")


def test_offsets_that_go_back(ds):
    where = _rewrite(ds, "offsets", lambda o: np.where(np.arange(len(o)) == 3, o[5], o))
    [(at, message)] = _problems(ds)
    assert at == f"{where}[4]" and "go back" in message
    _refused(ds, f"{where}: offsets go back from ")


def test_offsets_that_do_not_start_at_0(ds):
    where = _rewrite(ds, "offsets", lambda o: np.where(np.arange(len(o)) == 0, 1, o))
    assert (f"{where}[0]", "the first offset is 1, not 0") in _problems(ds)
    _refused(ds, f"{where}: the first offset is 1, not 0")


def test_a_token_id_past_the_vocabulary(ds):
    where = _rewrite(ds, "tokens", lambda t: np.where(np.arange(len(t)) == 11, 60000, t))
    [(at, message)] = _problems(ds)
    assert at == f"{where}[11]" and "60000 is not below the vocabulary size 259" in message


def test_a_mask_that_is_not_zeros_and_ones(ds):
    where = _rewrite(ds, "mask", lambda m: np.where(np.arange(len(m)) == 2, 7, m))
    problems = _problems(ds)
    assert (f"{where}[2]", "mask value 7 is not 0 or 1") in problems


def test_counts_that_do_not_add_up(ds):
    manifest = _manifest(ds)
    manifest["splits"]["train"]["num_tokens"] += 1
    _save(ds, manifest)
    [(where, message)] = _problems(ds)
    assert where == "manifest.json: splits.train.num_tokens" and "add up to" in message


def test_a_future_format_version(ds):
    manifest = _manifest(ds)
    manifest["format_version"] = 99
    _save(ds, manifest)
    [(_, message)] = _problems(ds)
    assert "newer than this gristmill reads" in message
    with pytest.raises(DatasetError, match="upgrade gristmill"):
        gristmill.open_dataset(ds)


def test_a_path_that_escapes_the_dataset(ds, tmp_path):
    manifest = _manifest(ds)
    entry = manifest["splits"]["train"]["shards"][0]["tokens"]
    outside = tmp_path / "outside.tokens"
    shutil.copy(ds / entry["path"], outside)
    inside, entry["path"] = entry["path"], "../outside.tokens"
    _save(ds, manifest)
    [(where, message), (unlisted, _)] = _problems(ds)
    assert where == "../outside.tokens" and "outside the dataset directory" in message
    assert unlisted == inside  # the file the manifest no longer names
    with pytest.raises(DatasetError, match="outside"):
        _read_all(ds)


def test_a_malformed_manifest_is_a_problem_not_a_crash(ds):
    manifest = _manifest(ds)
    del manifest["splits"]["train"]["shards"][0]["num_tokens"]
    _save(ds, manifest)
    [(where, message)] = _problems(ds)
    assert where == "manifest.json: splits.train.shards[0].num_tokens"
    assert message == "None is not a count"


def _refused_at_open(ds: Path, key: str) -> str:
    with pytest.raises(DatasetError) as refused:
        gristmill.open_dataset(ds)
    message = str(refused.value)
    assert message.startswith(f"{ds / 'manifest.json'}: {key}")
    assert f"run `gristmill verify {ds}`" in message
    return message


def test_a_shard_entry_removed_from_the_manifest(ds):
    manifest = _manifest(ds)
    removed = manifest["splits"]["train"]["shards"].pop(1)
    _save(ds, manifest)
    documents = manifest["splits"]["train"]["num_documents"]
    message = _refused_at_open(ds, "splits.train.num_documents")
    assert f"{documents}, but the shards add up to {documents - removed['num_documents']}" in (
        message
    )
    problems = dict(_problems(ds))
    assert "add up to" in problems["manifest.json: splits.train.num_documents"]
    assert problems[removed["tokens"]["path"]] == _UNLISTED  # the files it no longer names


def test_a_mask_set_to_null_in_the_manifest(ds):
    manifest = _manifest(ds)
    shard = manifest["splits"]["train"]["shards"][0]
    mask, shard["mask"] = shard["mask"]["path"], None
    _save(ds, manifest)
    with pytest.raises(DatasetError, match="would carry loss") as refused:
        gristmill.open_dataset(ds)
    assert str(refused.value).startswith(
        f"{ds.resolve() / 'manifest.json'}: the shard 0 of the split ({shard['tokens']['path']}) "
        "has no mask"
    )
    problems = dict(_problems(ds))
    assert "num_loss_tokens" in problems[shard["tokens"]["path"]]
    assert "not listed in the manifest" in problems[mask]


def test_counts_of_the_wrong_type(ds):
    manifest = _manifest(ds)
    manifest["splits"]["train"]["shards"][0]["num_documents"] = True
    _save(ds, manifest)
    assert "True is not a count" in _refused_at_open(ds, "splits.train.shards[0].num_documents")


def test_a_file_size_that_disagrees_with_the_counts(ds):
    manifest = _manifest(ds)
    manifest["splits"]["train"]["shards"][0]["offsets"]["bytes"] += 8
    _save(ds, manifest)
    with pytest.raises(DatasetError, match="manifest expects"):
        gristmill.open_dataset(ds)


def test_the_manifest_lists_the_tokenizer_files(pristine):
    data = (pristine / "tokenizer" / "byte.json").read_bytes()
    assert _manifest(pristine)["tokenizer"]["files"] == [
        {
            "path": "tokenizer/byte.json",
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    ]


def test_a_deleted_tokenizer(ds):
    shutil.rmtree(ds / "tokenizer")
    assert _problems(ds) == [("tokenizer/byte.json", "missing")]
    assert "tokenizer/byte.json: missing" in run_gristmill("verify", str(ds)).stdout
    with pytest.raises(DatasetError, match=r"tokenizer/byte\.json: missing"):
        gristmill.open_dataset(ds)


def test_an_edited_tokenizer(ds):
    path = ds / "tokenizer" / "byte.json"
    path.write_text(path.read_text().replace("true", "fals"))  # the same size
    [(where, message)] = _problems(ds)
    assert where == "tokenizer/byte.json" and "(the content changed)" in message
    path.write_text(path.read_text() + " ")
    with pytest.raises(DatasetError, match="manifest expects"):
        gristmill.open_dataset(ds)


def test_files_the_manifest_does_not_list(ds):
    """In the folders gristmill owns, an unlisted file is reported; beside them it is not."""
    (ds / "tokenizer" / "vocab.txt").write_text("x")
    (ds / "train" / "00009-00000.tokens").write_bytes(b"\0\0")
    (ds / "NOTES.txt").write_text("the user's own")
    assert _problems(ds) == [
        ("tokenizer/vocab.txt", _UNLISTED),
        ("train/00009-00000.tokens", _UNLISTED),
    ]
    assert len(gristmill.open_dataset(ds)) == _manifest(ds)["splits"]["train"]["num_documents"]


_UNLISTED = (
    "not listed in the manifest (added after prepare, or left by a killed run); remove it, "
    "or prepare the dataset again"
)


@pytest.mark.parametrize(
    "damage, where, message",
    [
        ("not json", "{ds}/manifest.json", "not valid JSON ("),
        ("no manifest", "{ds}", "no manifest.json; this is not a gristmill dataset"),
        ("incomplete", "{ds}", "this dataset is incomplete"),
    ],
)
def test_a_message_names_its_place_once(ds, damage, where, message):
    if damage == "not json":
        (ds / "manifest.json").write_text("{")
    elif damage == "no manifest":
        (ds / "manifest.json").unlink()
    else:
        (ds / ".gristmill-incomplete").touch()
    [problem] = verify(ds)
    assert problem.where == where.format(ds=ds) and problem.message.startswith(message)
    assert str(ds) not in problem.message
    [line, _] = run_gristmill("verify", str(ds)).stdout.splitlines()
    assert line.startswith(f"{where.format(ds=ds)}: {message}")
    assert line.count(str(ds)) == 1


def test_a_shard_entry_without_its_tokens(ds):
    manifest = _manifest(ds)
    del manifest["splits"]["train"]["shards"][1]["tokens"]
    _save(ds, manifest)
    with pytest.raises(DatasetError, match="the shard 1 of the split has no tokens file entry"):
        gristmill.open_dataset(ds)
    assert ("manifest.json", "malformed manifest (KeyError: 'tokens')") in _problems(ds)


def test_a_dataset_whose_manifest_disagrees_can_be_prepared_again(ds, tmp_path):
    """Opening refuses it, but it is still gristmill's dataset: ``--overwrite`` replaces it."""
    manifest = _manifest(ds)
    manifest["splits"]["train"]["num_documents"] += 1
    _save(ds, manifest)
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps({"text": f"new {i}"}) + "\n" for i in range(50)))
    gristmill.prepare(src, ds, overwrite=True, progress=False)
    assert len(gristmill.open_dataset(ds)) == 50


def _edit_after(ds: Path, change) -> None:
    """Edit the manifest after prepare wrote it, as a person or a tool would: the seal stays."""
    manifest = _manifest(ds)
    change(manifest)
    (ds / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


_BROKEN = "its manifest_sha256 does not match its bytes: the manifest was edited or damaged"


def test_every_changed_byte_of_the_manifest_is_reported(tmp_path):
    """The manifest's seal covers its every byte, those of fields no reader uses included
    (provenance, stats, fingerprints): verify reports a bit flipped at any position."""
    src = tmp_path / "tiny.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    ds = tmp_path / "ds"
    gristmill.prepare(src, ds, progress=False)
    path = ds / "manifest.json"
    data = path.read_bytes()
    assert verify(ds) == []
    silent = []
    for position in range(len(data)):
        for bit in (0x01, 0x20):
            damaged = bytearray(data)
            damaged[position] ^= bit
            path.write_bytes(damaged)
            if not verify(ds):
                silent.append((position, bit))
    assert silent == []


def test_an_edited_manifest_is_refused_at_open_and_reported(ds):
    _edit_after(ds, lambda m: m["provenance"].update(created="yesterday"))
    with pytest.raises(DatasetError) as refused:
        gristmill.open_dataset(ds)
    assert str(refused.value).startswith(f"{ds / 'manifest.json'}: {_BROKEN}")
    assert f"run `gristmill verify {ds}`" in str(refused.value)
    [(where, message)] = _problems(ds)  # nothing else changed
    assert where == "manifest.json" and message.startswith(_BROKEN)
    done = run_gristmill("verify", str(ds))
    assert done.returncode == 1 and _BROKEN in done.stdout


def test_an_unsealed_manifest_opens_and_verify_says_it_has_no_seal(ds):
    """A manifest written before seals existed (no ``manifest_sha256``) is still served."""
    _edit_after(ds, lambda m: m.pop("manifest_sha256"))
    assert len(gristmill.open_dataset(ds)) == _manifest(ds)["splits"]["train"]["num_documents"]
    [(where, message)] = _problems(ds)
    assert where == "manifest.json" and message.startswith("no manifest_sha256: written by")
    assert message.endswith("prepare the dataset again to seal it")


def test_a_seal_that_is_not_a_digest_is_broken(ds):
    path = ds / "manifest.json"
    seal = _manifest(ds)["manifest_sha256"]
    path.write_bytes(path.read_bytes().replace(seal.encode(), b"not-hex" * 9 + b"x"))
    [(where, message)] = _problems(ds)
    assert where == "manifest.json" and message.startswith(_BROKEN)


def test_a_shard_format_nobody_provides_is_a_problem_not_a_crash(ds):
    manifest = _manifest(ds)
    manifest["shard_format"]["name"] = "memmap-shardz"
    _save(ds, manifest)
    problems = _problems(ds)
    [(where, message)] = problems
    assert where == "manifest.json: shard_format.name"
    assert "no shard format named 'memmap-shardz'" in message
