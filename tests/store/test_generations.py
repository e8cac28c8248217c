"""A dataset prepared again in place while a reader has it open: the reader serves its own
generation's samples or raises a clear error, never a mix of two generations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError
from gristmill.layout import MANIFEST
from gristmill.plugin.components import ShardFormatType
from gristmill.plugin.manager import get_manager
from gristmill.store.manifest import SEAL, check_generation, read_manifest

DOCS = 400


def _write(path: Path, letter: str) -> Path:
    """Documents whose lengths do not depend on ``letter``: two generations written from files
    with different letters have shards of the same sizes, so only their content tells them
    apart."""
    path.write_text(
        "".join(
            json.dumps({"text": f"{letter * (i % 13 + 5)} {i:04d}"}) + "\n" for i in range(DOCS)
        )
    )
    return path


def _prepare(tmp_path: Path, letter: str) -> Path:
    out = tmp_path / "ds"
    source = _write(tmp_path / f"{letter}.jsonl", letter)
    gristmill.prepare(source, out, tokens_per_shard=400, overwrite=True, progress=False)
    return out


def _text(sample: dict[str, np.ndarray]) -> str:
    ids = sample["input_ids"]
    return bytes(ids[ids < 256].tolist()).decode()


def test_a_reader_never_mixes_two_generations(tmp_path):
    out = _prepare(tmp_path, "a")
    ds = gristmill.open_dataset(out)
    assert len(ds.manifest["splits"]["train"]["shards"]) > 10
    first = [_text(ds[i]) for i in range(20)]  # maps the first shards only
    assert all(text.startswith("a") for text in first)
    _prepare(tmp_path, "b")  # same sizes, other content
    assert _text(gristmill.open_dataset(out)[0]).startswith("b")  # the new one opens fine
    served, refused = [], []
    for i in range(len(ds)):
        try:
            served.append(_text(ds[i]))
        except DatasetError as exc:
            refused.append(str(exc))
    assert all(text.startswith("a") for text in served), "a sample of the new generation"
    assert refused, "the shards not mapped before were read from the new generation"
    assert f"{out.resolve()}: the dataset changed since it was opened" in refused[0]
    assert "open it again" in refused[0]


def test_a_batch_never_mixes_two_generations(tmp_path):
    out = _prepare(tmp_path, "a")
    ds = gristmill.open_dataset(out, seq_len=64, packer="first-fit")
    ds.batch(np.arange(4))
    _prepare(tmp_path, "b")
    with pytest.raises(DatasetError, match="changed since it was opened"):
        ds.batch(np.arange(len(ds)))


def test_offsets_read_for_the_plan_are_checked_too(tmp_path):
    """A reader opened before the new generation plans from the offsets it checked at open."""
    out = _prepare(tmp_path, "a")
    manifest = read_manifest(out)
    fmt = get_manager().get(ShardFormatType, manifest["shard_format"]["name"])
    reader = fmt.reader(out, manifest["splits"]["train"]["shards"], dtype=manifest["dtype"])
    _prepare(tmp_path, "b")
    with pytest.raises(DatasetError, match="changed since it was opened"):
        reader.lengths()


def test_every_prepare_is_a_new_generation(tmp_path):
    out = _prepare(tmp_path, "a")
    first = read_manifest(out)["generation"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    source = tmp_path / "a.jsonl"
    # The same sources and settings again: up to date, the same generation.
    gristmill.prepare(source, out, tokens_per_shard=400, progress=False)
    assert read_manifest(out)["generation"] == first
    again = _prepare(tmp_path, "a")
    assert read_manifest(again)["generation"] != first


def test_a_manifest_replaced_while_opening_is_refused(tmp_path):
    """The manifest read, then the dataset prepared again before the shards were checked:
    opening compares the generation once the shards are checked."""
    out = _prepare(tmp_path, "a")
    manifest = read_manifest(out)
    _prepare(tmp_path, "b")
    fmt = get_manager().get(ShardFormatType, manifest["shard_format"]["name"])
    fmt.reader(out, manifest["splits"]["train"]["shards"], dtype=manifest["dtype"])  # same sizes
    with pytest.raises(DatasetError, match=r"changed since it was opened") as refused:
        check_generation(out, manifest)
    assert str(out) in str(refused.value) and MANIFEST in str(refused.value)


def test_the_same_generation_written_otherwise_is_the_same(tmp_path):
    """Without a seal (as an older gristmill wrote) the manifest may be laid out otherwise."""
    out = _prepare(tmp_path, "a")
    manifest = read_manifest(out)
    del manifest[SEAL]
    (out / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
    check_generation(out, manifest)
    assert len(gristmill.open_dataset(out)) == DOCS


def test_the_stored_tokenizer_of_another_generation_is_refused(tmp_path):
    out = _prepare(tmp_path, "a")
    ds = gristmill.open_dataset(out)
    _prepare(tmp_path, "b")
    with pytest.raises(DatasetError, match="changed since it was opened"):
        ds.tokenizer  # noqa: B018 (loading it is the point)
