"""Shard formats: what the writer took the reader gives back, ids and masks exactly, in every id
width; manifest entries that count right and name every file it wrote (size and SHA-256), each
under the task's prefix; a deep check that passes intact shards and finds ids past the
vocabulary."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.plugin.components import ReadsSpans, ShardFormatType
from gristmill.testing.kit import Check, Context

SPLIT = "train"
TOKENS_PER_SHARD = 60  # several shards from the kit's documents
Document = tuple[np.ndarray, "np.ndarray | None"]


def checks(record: ShardFormatType) -> dict[str, Check]:
    found: dict[str, Check] = {"round-trip": check_round_trip, "files": check_files}
    if record.verify is not None:
        found["verify"] = check_verify
    return found


def documents(dtype: np.dtype, seed: int = 0) -> list[Document]:
    """Documents of 1 to 90 tokens, the largest id the width holds among them, each with a
    loss mask or none (every token has loss)."""
    rng = np.random.default_rng(seed)
    top = int(np.iinfo(dtype).max)
    docs: list[Document] = []
    for i in range(25):
        ids = rng.integers(0, top, int(rng.integers(1, 90)), endpoint=True).astype(np.int64)
        ids[0] = top if i == 3 else ids[0]
        mask = None if i % 3 == 0 else rng.integers(0, 2, len(ids)).astype(np.uint8)
        docs.append((ids, mask))
    return docs


def write(record: ShardFormatType, folder: Path, docs: list[Document], **options: Any) -> list:
    """The entries ``close()`` returns for ``docs``, added in two calls."""
    options = {"tokens_per_shard": TOKENS_PER_SHARD, "prefix": "t0-", **options}
    writer = record.writer(folder, SPLIT, **options)
    half = len(docs) // 2
    for part in (docs[:half], docs[half:]):
        writer.add([ids for ids, _ in part], [mask for _, mask in part])
    return writer.close()


def _effective(mask: np.ndarray | None, size: int) -> bytes:
    return (np.ones(size, np.uint8) if mask is None else np.asarray(mask, np.uint8)).tobytes()


def check_round_trip(record: ShardFormatType, context: Context) -> None:
    for dtype in (np.dtype(np.uint16), np.dtype(np.uint32)):
        folder, docs = context.folder(), documents(dtype)
        entries = write(record, folder, docs, dtype=dtype)
        reader = record.reader(folder, entries, dtype=dtype)
        assert reader.num_documents == len(docs), f"{dtype}: {reader.num_documents} documents"
        lengths = reader.lengths()
        assert lengths.dtype == np.int64 and lengths.tolist() == [len(i) for i, _ in docs]
        for k, (ids, mask) in enumerate(docs):
            got_ids, got_mask = reader.document(k)
            assert got_ids.astype(dtype).tobytes() == ids.astype(dtype).tobytes(), f"ids of {k}"
            assert _effective(got_mask, len(ids)) == _effective(mask, len(ids)), f"mask of {k}"
        if isinstance(reader, ReadsSpans):
            _check_spans(reader, docs, dtype)
        empty = record.reader(folder, [], dtype=dtype)
        assert empty.num_documents == 0 and len(empty.lengths()) == 0, "a split of no shards"


def _check_spans(reader: Any, docs: list[Document], dtype: np.dtype) -> None:
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(docs), 12)
    starts = np.array([rng.integers(0, len(docs[d][0])) for d in picks], np.int64)
    sizes = np.array([rng.integers(1, len(docs[d][0]) - s + 1) for d, s in zip(picks, starts)])
    tokens, mask = reader.spans(picks, starts, sizes)
    want = np.concatenate([docs[d][0][s : s + n] for d, s, n in zip(picks, starts, sizes)])
    assert np.asarray(tokens).astype(dtype).tobytes() == want.astype(dtype).tobytes(), "spans ids"
    masks = [
        _effective(docs[d][1], len(docs[d][0]))[s : s + n] for d, s, n in zip(picks, starts, sizes)
    ]
    assert _effective(mask, len(want)) == b"".join(masks), "spans() gives other loss masks"


def file_entries(value: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"path", "bytes", "sha256"}`` entry in a shard's manifest entry."""
    if isinstance(value, dict):
        if {"path", "bytes", "sha256"} <= value.keys():
            yield value
        else:
            for inner in value.values():
                yield from file_entries(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from file_entries(inner)


def check_files(record: ShardFormatType, context: Context) -> None:
    folder, dtype = context.folder(), np.dtype(np.uint16)
    tasks = {prefix: documents(dtype, seed) for seed, prefix in enumerate(("t0-", "t1-"))}
    entries = {p: write(record, folder, d, dtype=dtype, prefix=p) for p, d in tasks.items()}
    listed = set()
    for prefix, shards in entries.items():
        docs = tasks[prefix]
        assert sum(s["num_documents"] for s in shards) == len(docs), "num_documents"
        assert sum(s["num_tokens"] for s in shards) == sum(len(i) for i, _ in docs), "num_tokens"
        loss = sum(int(m.sum()) if m is not None else len(i) for i, m in docs)
        assert sum(s["num_loss_tokens"] for s in shards) == loss, "num_loss_tokens"
        for entry in (e for shard in shards for e in file_entries(shard)):
            assert entry["path"].startswith(f"{SPLIT}/{prefix}"), f"{entry['path']}: not {prefix}"
            data = (folder / entry["path"]).read_bytes()
            assert len(data) == entry["bytes"], f"{entry['path']}: size"
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{entry['path']}: SHA-256"
            listed.add(entry["path"])
        reader = record.reader(folder, shards, dtype=dtype)  # the other task's files beside
        assert [reader.document(k)[0].tolist() for k in range(len(docs))] == [
            i.tolist() for i, _ in docs
        ], f"task {prefix}: the shards of two tasks in one split collide"
    written = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    assert written == listed, (
        f"files no entry names (temporaries left?): {sorted(written - listed)}"
    )


def check_verify(record: ShardFormatType, context: Context) -> None:
    verify = record.verify
    assert verify is not None  # the check is only made for a format that offers it
    folder, dtype = context.folder(), np.dtype(np.uint16)
    docs = documents(dtype)
    top = max(int(ids.max()) for ids, _ in docs)
    shards = write(record, folder, docs, dtype=dtype)
    for shard in shards:
        problems = list(verify(folder, shard, dtype=dtype.name, vocab_size=top + 1))
        assert not problems, f"intact shard reported: {problems}"
    found = [p for shard in shards for p in verify(folder, shard, dtype=dtype.name, vocab_size=top)]
    assert found, f"ids up to {top} are past a vocabulary of {top}, and verify found nothing"
