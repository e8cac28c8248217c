"""Damage any byte of any file of a dataset: ``verify`` reports it (for every file but the
cached plans, which are recomputed; the manifest too, by its seal), and every way of reading the dataset serves the original samples or raises a
``GristmillError``, never another exception and never different samples.

The dataset has loss masks (prompt/completion, byte tokenizer), a ``val`` split, several shards
per split and cached ``first-fit`` plans. Each example copies it, flips a bit, replaces a byte,
cuts the file short or appends bytes at a drawn position of a drawn file (the manifest, every
shard file, the tokenizer's file, the cached plans), then reads every sample of every split with
``ds[i]``, ``ds.batch`` and the torch loader (where torch is installed).
The budget is a quarter of ``GRISTMILL_FUZZ_EXAMPLES``, else of the hypothesis profile's examples
(tests/conftest.py: 25 under ``ci``, 500 in ``tox -e fuzz``).
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DatasetError, GristmillError
from gristmill.layout import PLANS_DIR
from gristmill.plugin import integrity
from gristmill.serve.dataset import Dataset
from gristmill.store.verify import verify
from tests.helpers import fuzz_examples

EXAMPLES = fuzz_examples()
HAS_TORCH = importlib.util.find_spec("torch") is not None  # the loader is read too where it is
DAMAGE = settings(
    max_examples=max(10, EXAMPLES // 4),  # each example reads its copy five ways
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SPLITS = ("train", "val")
OPEN = {"seq_len": 96, "packer": "first-fit"}  # a plan cached beside the shards
BATCH = 4


def _records(count: int) -> Iterator[str]:
    for i in range(count):
        prompt = f"question {i}: {'why ' * (i % 5)}?"
        completion = f"answer {i} " + "because " * (i % 7)
        yield json.dumps({"prompt": prompt, "completion": completion}) + "\n"


def _loader_batches(ds: Dataset) -> Iterator[dict[str, np.ndarray]]:
    """The torch loader's collated batches (0 workers): their tensors as numpy arrays, the
    rest (``use_cache``, ``max_length_q``…) as they are."""
    import torch

    from gristmill.torch import dataloader

    for batch in dataloader(ds, batch_size=BATCH, num_workers=0, rank=0, world_size=1):
        yield {k: v.numpy() if torch.is_tensor(v) else v for k, v in batch.items()}


def _served(path: Path, split: str) -> dict[str, Any]:
    """Every sample of ``split``, and the torch loader's batches (where torch is installed)."""
    ds = gristmill.open_dataset(path, split, **OPEN)
    return {
        "items": [ds[i] for i in range(len(ds))],
        "loader": list(_loader_batches(ds)) if HAS_TORCH else [],
    }


class Pristine(NamedTuple):
    root: Path
    original: dict[str, dict[str, Any]]  # what every split serves

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing example
        return f"Pristine({str(self.root)!r})"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Pristine:
    """The dataset, its plans cached, and what every split serves."""
    folder = tmp_path_factory.mktemp("adversarial")
    source = folder / "qa.jsonl"
    source.write_text("".join(_records(90)))
    out = folder / "ds"
    gristmill.prepare(source, out, val_fraction=0.3, tokens_per_shard=900, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for split in SPLITS:
        shards = manifest["splits"][split]["shards"]
        assert len(shards) >= 2 and all(shard["mask"] for shard in shards)
    original = {split: _served(out, split) for split in SPLITS}
    assert len(list((out / PLANS_DIR).iterdir())) == len(SPLITS)
    return Pristine(out, original)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def kind_of(relative: str) -> str:
    """The file's kind, for statistics: manifest, tokenizer, plan, tokens, offsets or mask."""
    if relative == "manifest.json":
        return "manifest"
    if relative.startswith("tokenizer/"):
        return "tokenizer"
    if relative.startswith(PLANS_DIR):
        return "plan"
    return relative.rpartition(".")[2]


def damage(path: Path, how: str, position: int, value: int) -> None:
    """Change the file at ``path``: ``flip`` bit ``value % 8`` of byte ``position``, ``replace``
    that byte by another, ``truncate`` it to ``position`` bytes, ``append`` ``value % 16 + 1``
    bytes."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[position] ^= 1 << (value % 8)
    elif how == "replace":
        data[position] = (data[position] + 1 + value % 255) % 256
    elif how == "truncate":
        del data[position:]
    else:
        data += bytes((value + k * 37) % 256 for k in range(value % 16 + 1))
    with open(path, "r+b") as f:  # in place: the same file, changed
        f.write(data)
        f.truncate(len(data))


@contextmanager
def copy_of(root: Path) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="damaged-"))
    try:
        shutil.copytree(root, folder / "ds")
        yield folder / "ds"
    finally:
        shutil.rmtree(folder)


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def _each(
    read: Callable[[], Iterator[dict[str, np.ndarray]]], want: list[dict[str, np.ndarray]]
) -> str | None:
    """What ``read`` served that differs from ``want`` (``None``: the same samples, or a
    ``GristmillError`` before anything different)."""
    count = 0
    try:
        for count, (got, expected) in enumerate(zip(read(), want, strict=True), 1):
            if not _same(got, expected):
                return f"item {count - 1} differs"
    except GristmillError:
        return None
    except ValueError as exc:  # zip(strict=True): served more or fewer
        if "zip()" not in str(exc):
            raise
        return f"{count} items served, {len(want)} expected"
    return None


def different_samples(path: Path, split: str, original: dict[str, Any]) -> str | None:
    """How reading ``split`` of the damaged ``path`` serves samples other than ``original``
    (``None`` when it serves them or raises a ``GristmillError``; any other exception
    propagates)."""
    try:
        ds = gristmill.open_dataset(path, split, **OPEN)
    except GristmillError:
        return None
    if len(ds) != len(original["items"]):
        return f"{len(ds)} samples, {len(original['items'])} expected"

    def items() -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(ds)):
            try:
                yield ds[i]
            except GristmillError:
                yield original["items"][i]  # refused: each sample on its own

    reads = [
        ("ds[i]", items, original["items"]),
        ("ds.batch", lambda: iter(ds.batch(np.arange(len(ds)))), original["items"]),
    ]
    if HAS_TORCH:
        reads.append(("loader", lambda: _loader_batches(ds), original["loader"]))
    for name, read, want in reads:
        found = _each(read, want)
        if found is not None:
            return f"{name}: {found}"
    return None


CASES = st.tuples(
    st.integers(0, 10_000),  # which file (modulo their number)
    st.sampled_from(["flip", "replace", "truncate", "append"]),
    st.floats(0, 1, exclude_max=True),  # where in the file
    st.integers(0, 255),
)


def check_case(root: Path, original: dict[str, Any], case: tuple[int, str, float, int]) -> str:
    """Damage a copy of ``root`` as ``case`` says and check it; returns the damage's kind."""
    which, how, where, value = case
    files = _files(root)
    relative = files[which % len(files)]
    kind = kind_of(relative)
    with copy_of(root) as copy:
        size = (copy / relative).stat().st_size
        damage(copy / relative, how, int(where * size), value)
        reported = bool(verify(copy))  # never raises: every problem is reported
        # The plan is a cache, recomputed when damaged; the manifest's seal covers its every
        # byte, those of fields no reader uses included.
        if kind != "plan":
            assert reported, f"verify found nothing wrong after {how} in {relative}"
        for split in SPLITS:
            found = different_samples(copy, split, original[split])
            assert found is None, f"{how} at {int(where * size)} of {relative}: {split}: {found}"
    return f"{kind} {how}" + ("" if reported else ", verify silent")


@DAMAGE
@given(case=CASES)
def test_damage_is_reported_and_never_served(pristine, case):
    root, original = pristine
    event(check_case(root, original, case))


def test_a_plan_in_a_compression_zipfile_does_not_know_is_recomputed(pristine, caplog):
    """A flipped bit in a cached plan's zip directory can name a compression method zipfile
    does not implement: a cache to recompute, like any other damaged plan."""
    with copy_of(pristine.root) as copy:
        plans = sorted((copy / PLANS_DIR).iterdir())
        for plan in plans:
            data = bytearray(plan.read_bytes())
            at = data.index(b"PK\x01\x02") + 10  # the first member's compression method
            data[at : at + 2] = (99).to_bytes(2, "little")
            plan.write_bytes(bytes(data))
        for split in SPLITS:
            assert different_samples(copy, split, pristine.original[split]) is None
        for plan in plans:
            assert f"{plan}: not a readable pack plan (NotImplementedError" in caplog.text


def _shard_file(root: Path, kind: str, split: str = "train", shard: int = 1) -> dict[str, Any]:
    manifest = json.loads((root / "manifest.json").read_text())
    return manifest["splits"][split]["shards"][shard][kind]


def still_valid(data: bytearray, kind: str) -> None:
    """Change ``data`` (a shard file's bytes) so that it still reads as valid: an id one off
    (inside the vocabulary), a mask 0 made 1, an offset one further (still increasing)."""
    if kind == "tokens":
        data[len(data) // 4 * 2] ^= 1  # the low byte of a uint16 id
    elif kind == "mask":
        data[data.index(0)] = 1
    else:
        offsets = np.frombuffer(data, "<i8").copy()
        at = int(np.flatnonzero(np.diff(offsets)[:-1] > 1)[0]) + 1
        offsets[at] += 1
        data[:] = offsets.tobytes()


@pytest.mark.parametrize("kind", ["tokens", "mask", "offsets"])
def test_a_change_that_reads_as_valid_is_refused_not_served(pristine, kind):
    with copy_of(pristine.root) as copy:
        entry = _shard_file(copy, kind)
        path = copy / entry["path"]
        data = bytearray(path.read_bytes())
        still_valid(data, kind)
        path.write_bytes(bytes(data))
        assert different_samples(copy, "train", pristine.original["train"]) is None
        with pytest.raises(GristmillError) as caught:
            ds = gristmill.open_dataset(copy, "train", **OPEN)
            ds.batch(np.arange(len(ds)))
        message = str(caught.value)
        assert message.startswith(f"{copy.resolve() / entry['path']}: SHA-256 "), message
        assert f"gristmill verify {copy.resolve()}" in message and "prepare" in message


def _prepared_again(tmp_path: Path) -> Dataset:
    """A dataset opened, then prepared again into its directory: the opened one is outdated."""
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(_records(30)))
    out = tmp_path / "ds"
    gristmill.prepare(source, out, tokens_per_shard=400, progress=False)
    ds = gristmill.open_dataset(out, **OPEN)
    assert pickle.loads(pickle.dumps(ds))[0].keys() == ds[0].keys()  # the same generation
    source.write_text("".join(_records(31)))
    gristmill.prepare(source, out, tokens_per_shard=400, overwrite=True, progress=False)
    return ds


def test_a_copy_never_reopens_a_newer_generation(tmp_path):
    """A copy of the dataset (as a worker unpickles it) opens it again from its path: a dataset
    prepared into the directory since is refused, not served."""
    ds = _prepared_again(tmp_path)
    copy = pickle.loads(pickle.dumps(ds))
    for use in (lambda: copy[0], lambda: copy.batch([0, 1]), lambda: len(copy)):
        with pytest.raises(DatasetError, match="the dataset changed since it was opened") as caught:
            use()
        assert str(caught.value).startswith(f"{tmp_path / 'ds'}: ")
        assert "open it again" in str(caught.value)
    with pytest.raises(DatasetError, match="the dataset changed since it was opened"):
        ds.with_seed(1)


def test_a_worker_never_reopens_a_newer_generation(tmp_path):
    """A spawned DataLoader worker that finds the dataset prepared again: the error reaches the
    training loop as itself, not as a worker that exited."""
    pytest.importorskip("torch", reason="a DataLoader worker needs torch (the min envs lack it)")
    from gristmill.torch import dataloader

    ds = _prepared_again(tmp_path)
    loader = dataloader(ds, batch_size=2, num_workers=1, multiprocessing_context="spawn")
    with pytest.raises(DatasetError, match="the dataset changed since it was opened"):
        next(iter(loader))


@pytest.fixture
def stamps(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test's, seen from a process that has checked nothing yet."""
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(integrity, "_checked", set())
    monkeypatch.setattr(integrity, "_logs", {})
    return tmp_path / "cache"


def _small(tmp_path: Path) -> Path:
    source = tmp_path / "qa.jsonl"
    source.write_text("".join(_records(40)))
    gristmill.prepare(source, tmp_path / "ds", tokens_per_shard=600, progress=False)
    return tmp_path / "ds"


def _read_all(path: Path) -> None:
    ds = gristmill.open_dataset(path, **OPEN)
    ds.batch(np.arange(len(ds)))


def _loss_index(path: Path) -> str:
    """The train split's loss index: read by an open that computes the pack plan (the first;
    the next find it cached)."""
    return json.loads((path / "manifest.json").read_text())["index"]["train"]["loss"]["path"]


def _shard_paths(path: Path) -> list[str]:
    """The files reading the train split checks: its shards', and its offsets index (read at
    open, for packing)."""
    manifest = json.loads((path / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    files = [shard[kind]["path"] for shard in shards for kind in ("tokens", "offsets", "mask")]
    return sorted([*files, manifest["index"]["train"]["path"]])


def test_a_file_is_hashed_once_a_machine_until_it_changes(tmp_path, stamps, hashed, monkeypatch):
    out = _small(tmp_path)
    monkeypatch.setattr(integrity, "SETTLED_NS", 0)  # as if written long ago
    hashed.clear()  # prepare read the offsets it wrote
    _read_all(out)
    assert sorted(hashed) == sorted([*_shard_paths(out), _loss_index(out)])  # each file once
    hashed.clear()
    monkeypatch.setattr(integrity, "_checked", set())  # as another process would
    monkeypatch.setattr(integrity, "_logs", {})
    _read_all(out)
    assert hashed == []  # stamps looked up, nothing hashed
    # In place, the same size, the modification time set back: only the change time tells.
    entry = _shard_file(out, "tokens", shard=0)
    path = out / entry["path"]
    before = path.stat()
    data = bytearray(path.read_bytes())
    still_valid(data, "tokens")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(DatasetError, match=f"{entry['path']}: SHA-256"):
        _read_all(out)
    assert hashed == [entry["path"]]


def test_a_file_written_seconds_ago_is_hashed_at_every_open(tmp_path, stamps, hashed):
    """Changed again within its filesystem's clock tick, a file could keep every stat field:
    a file that new is never stamped."""
    out = _small(tmp_path)
    hashed.clear()
    _read_all(out)
    _read_all(out)
    assert sorted(hashed) == sorted([*_shard_paths(out) * 2, _loss_index(out)])
    assert not stamps.exists()


def test_processes_opening_together_hash_each_file_once(tmp_path, stamps, monkeypatch):
    out = _small(tmp_path)
    monkeypatch.setattr(integrity, "SETTLED_NS", 0)
    context = multiprocessing.get_context("fork")
    barrier, counts = context.Barrier(4), context.Queue()
    ranks = [context.Process(target=_rank, args=(out, barrier, counts)) for _ in range(4)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(60)
    hashed = [path for _ in ranks for path in counts.get(timeout=5)]
    # The others waited for the stamp.
    assert sorted(hashed) == sorted([*_shard_paths(out), _loss_index(out)])


def _rank(path: Path, barrier: Any, counts: Any) -> None:
    seen: list[str] = []
    real = integrity._hash

    def counting(fd: int, info: os.stat_result, entry: dict[str, Any], *args: Any) -> None:
        seen.append(entry["path"])
        real(fd, info, entry, *args)

    integrity._hash = counting
    barrier.wait()
    _read_all(path)
    counts.put(seen)


def test_a_cache_folder_that_cannot_be_written_still_checks(tmp_path, hashed, monkeypatch, caplog):
    out = _small(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(blocker))
    monkeypatch.setattr(integrity, "_checked", set())
    monkeypatch.setattr(integrity, "_logs", {})
    monkeypatch.setattr(integrity, "SETTLED_NS", 0)
    _read_all(out)
    _read_all(out)
    warnings = [r.getMessage() for r in caplog.records if "cannot record" in r.getMessage()]
    assert len(warnings) == 1 and "GRISTMILL_CACHE_DIR" in warnings[0], warnings
    assert warnings[0].startswith(f"{blocker / 'checked'}: ")
    hashed.clear()
    monkeypatch.setattr(integrity, "_checked", set())  # as another process would
    monkeypatch.setattr(integrity, "_logs", {})
    _read_all(out)
    assert sorted(hashed) == _shard_paths(out)  # no stamps: hashed again, so checked


def test_a_torn_or_damaged_stamp_log_only_costs_hashing(tmp_path, stamps, hashed, monkeypatch):
    """Appends that raced on a filesystem without atomic appends, or a damaged cache: a line
    that is not a whole stamp stamps nothing, and the stamps after it still count."""
    out = _small(tmp_path)
    monkeypatch.setattr(integrity, "SETTLED_NS", 0)
    _read_all(out)
    (log,) = (stamps / "checked").iterdir()
    good = log.read_bytes()
    torn = [line[:40] for line in good.split()]  # every stamp cut short
    log.write_bytes(b"\n".join(torn) + b"\n\xff\x00not a stamp\n" + b"0" * 63)  # and no newline
    hashed.clear()
    monkeypatch.setattr(integrity, "_checked", set())
    monkeypatch.setattr(integrity, "_logs", {})
    _read_all(out)
    assert sorted(hashed) == _shard_paths(out)  # no stamp trusted: every file hashed again
    hashed.clear()
    monkeypatch.setattr(integrity, "_checked", set())
    monkeypatch.setattr(integrity, "_logs", {})
    _read_all(out)
    assert hashed == []  # the stamps written after the torn line count
