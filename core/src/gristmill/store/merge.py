"""Task records → the manifest's splits, in task order: exact deduplication across tasks, counts,
statistics, the metadata columns and the reject file."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gristmill.errors import DatasetError
from gristmill.layout import TASKS_DIR, reject_file
from gristmill.plugin.atomic import sync_directory, write_atomic
from gristmill.plugin.components import ShardFormatType
from gristmill.store.metadata import (
    MergedColumns,
    PartColumns,
    TaskColumns,
    check_record,
    merge_columns,
)
from gristmill.store.stats import length_stats
from gristmill.store.tasks import TaskSettings, read_record, task_file

log = logging.getLogger("gristmill")

DEDUP_READ = 4096  # documents copied per writer call when a task's shards are rewritten


@dataclass
class _Part:
    """One task's documents in one split."""

    task: int
    split: str
    shards: list[dict[str, Any]]
    positions: np.ndarray  # per document: the position of its source in the run
    columns: TaskColumns | None  # its documents' metadata, as the task saved it
    digests: np.ndarray | None  # per document: its 16-byte digest (with dedup)


@dataclass
class Merged:
    splits: dict[str, dict[str, Any]]
    records: list[int]  # documents per source position
    skipped: dict[str, int]
    passed_over: dict[str, int]  # units sources left out on purpose (blank lines…), per reason
    duplicates: int
    truncated: int
    metadata: dict[str, Any]  # the statistics of the documents' metadata
    columns: MergedColumns | None  # the metadata columns' files (None: no document has any)


def merge(
    settings: TaskSettings,
    tasks: int,
    sources: int,
    fmt: ShardFormatType,
    main_skipped: dict[str, int],
    announce: Callable[[str], None],
) -> Merged:
    """Read the records of ``tasks`` tasks; dedup, count, and publish ``OUT.rejects.jsonl``.

    The tasks' news (the format chosen for each source) go to ``announce`` in task order.
    """
    out_dir = Path(settings.out_dir)
    records = _read_records(out_dir, tasks)
    parts = [_part(out_dir, r, split) for r in records for split in settings.splits]
    duplicates = _dedup(out_dir, parts, fmt, settings) if settings.options.dedup else 0
    for record in records:
        for _, message in sorted(record["formats"].items(), key=lambda kv: int(kv[0])):
            announce(message)

    counts = np.zeros(sources, np.int64)
    splits: dict[str, dict[str, Any]] = {}
    split_lengths: dict[str, np.ndarray] = {}
    for split in settings.splits:
        chosen = [p for p in parts if p.split == split]
        shards = [shard for part in chosen for shard in part.shards]
        lengths = fmt.reader(out_dir, shards, dtype=np.dtype(settings.dtype)).lengths()
        split_lengths[split] = lengths
        for part in chosen:
            counts += np.bincount(part.positions, minlength=len(counts))
        if not len(lengths):
            log.warning(f"{out_dir}: the {split} split is empty")
        splits[split] = {
            "num_documents": len(lengths),
            "num_tokens": int(lengths.sum()),
            "num_loss_tokens": sum(shard["num_loss_tokens"] for shard in shards),
            "length_stats": length_stats(lengths),
            "shards": shards,
        }
    _publish_rejects(out_dir, tasks, main=bool(main_skipped))
    columns = merge_columns(
        out_dir,
        [PartColumns(p.split, len(p.positions), p.columns) for p in parts],
        split_lengths,
    )
    for split, entry in (columns.splits if columns else {}).items():
        splits[split]["metadata"] = entry
    return Merged(
        splits=splits,
        records=counts.tolist(),
        skipped=_tally(records, "skipped", main_skipped),
        passed_over=_tally(records, "passed_over"),
        duplicates=duplicates,
        truncated=sum(r["truncated"] for r in records),
        metadata=columns.stats if columns else {},
        columns=columns,
    )


def _tally(
    records: Sequence[dict[str, Any]], key: str, start: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The tasks' counts per reason under ``key``, added up (to ``start``), in reason order. A
    task record written before the key existed, by a run this one resumes, counts none."""
    total: Counter[str] = Counter(start or {})
    for record in records:
        total.update(record.get(key, {}))
    return dict(sorted(total.items()))


def _read_records(out_dir: Path, tasks: int) -> list[dict[str, Any]]:
    """Every task's record, in task order; refused when one is missing."""
    records = [read_record(out_dir, index) for index in range(tasks)]
    missing = [index for index, record in enumerate(records) if record is None]
    if missing:  # an executor that reported a task done whose record is not there
        raise DatasetError(
            f"{out_dir}: task {missing[0]} reported success but left no record in {TASKS_DIR}; "
            "run the same command again (an executor needs a filesystem its workers share)"
        )
    return [record for record in records if record is not None]


def _part(out_dir: Path, record: dict[str, Any], split: str) -> _Part:
    entry = record["splits"][split]
    positions = np.repeat(
        np.asarray([p for p, _ in entry["sources"]], np.int64),
        np.asarray([n for _, n in entry["sources"]], np.int64),
    )

    check_record(entry, str(task_file(out_dir, record["task"], "record.json")))
    columns = (
        TaskColumns(out_dir / TASKS_DIR / entry["metadata"], entry["metadata_columns"])
        if "metadata" in entry
        else None
    )
    digests = (
        np.fromfile(out_dir / TASKS_DIR / entry["digests"], dtype="V16")
        if "digests" in entry
        else None
    )
    return _Part(record["task"], split, entry["shards"], positions, columns, digests)


def _dedup(
    out_dir: Path, parts: Sequence[_Part], fmt: ShardFormatType, settings: TaskSettings
) -> int:
    """Keep the first of every set of identical documents (in task order); rewrite the shards of
    tasks that lose some. Returns how many documents were dropped.

    A rewritten task's shards get new names and its old ones are removed after: a crash in
    between leaves either the old files (the task's record still holds) or a task to redo.
    """
    digests = np.concatenate(
        [np.zeros(0, "V16"), *(p.digests for p in parts if p.digests is not None)]
    )
    keep = np.zeros(len(digests), bool)
    keep[np.unique(digests, return_index=True)[1]] = True
    first = 0
    for part in parts:
        count = len(part.positions)
        kept = np.flatnonzero(keep[first : first + count])
        first += count
        if len(kept) == count:
            continue
        dtype = np.dtype(settings.dtype)
        reader = fmt.reader(out_dir, part.shards, dtype=dtype)
        writer = fmt.writer(
            out_dir,
            part.split,
            dtype=dtype,
            tokens_per_shard=settings.options.tokens_per_shard,
            prefix=f"{part.task:05d}-d",
        )
        for start in range(0, len(kept), DEDUP_READ):
            docs = [reader.document(int(i)) for i in kept[start : start + DEDUP_READ]]
            writer.add([ids for ids, _ in docs], [mask for _, mask in docs])
        old = [v["path"] for shard in part.shards for v in shard.values() if isinstance(v, dict)]
        part.shards = writer.close()
        sync_directory(out_dir / part.split)  # the new files are durable before the old go
        del reader
        for path in old:
            (out_dir / path).unlink()
        part.positions = part.positions[kept]
        if part.columns is not None:
            part.columns.kept = kept
    return len(digests) - int(keep.sum())


def _publish_rejects(out_dir: Path, tasks: int, *, main: bool) -> None:
    """``OUT.rejects.jsonl``: the run's own rejects, then every task's, in order."""
    path = reject_file(out_dir)
    pieces = [out_dir / TASKS_DIR / "schema-rejects.jsonl"] if main else []
    pieces += [task_file(out_dir, index, "rejects.jsonl") for index in range(tasks)]
    pieces = [p for p in pieces if p.exists()]
    if not pieces:
        path.unlink(missing_ok=True)
        return

    def copy(out: BinaryIO) -> None:
        for piece in pieces:
            with open(piece, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)

    write_atomic(path, copy)
