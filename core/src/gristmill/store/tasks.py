"""Prepare's unit of work: a task reads some pieces of the sources and writes its own shards.

The plan depends on the input alone (its size, never the worker count), and a task's output
depends on its pieces alone; the manifest lists the tasks' shards in task order. So a dataset is
byte-identical whatever the number of workers or the executor, and after a crash only the tasks
that left no record are run again.

A task's files: its shards ``SPLIT/TTTTT-SSSSS.*`` and, in ``.gristmill-tasks/``, its record
``TTTTT-record.json`` (written last, atomically: the task is done when it exists), its skipped
records ``TTTTT-rejects.jsonl``, and per split the documents' digests (with ``dedup``) and
metadata rows. The record names everything; ``prepare`` merges the records into the manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.ingest.encoding import assign_splits, digest, encoded_batches
from gristmill.ingest.mapping import mapped_examples
from gristmill.ingest.policy import ErrorPolicy
from gristmill.layout import TASKS_DIR
from gristmill.plugin.atomic import canonical_json, sync_directory, write_atomic
from gristmill.plugin.components import Source, Tokenizer
from gristmill.plugin.manager import PluginManager, get_manager

DEFAULT_TASK_BYTES = 16 << 20  # input per task: enough to amortise it, small enough to balance
UNSIZED_PIECES = 64  # a source that cannot tell its size splits this finely, as far as it can


@dataclass(frozen=True)
class Task:
    index: int
    pieces: tuple[tuple[int, Source], ...]  # (position of the source in the run, a piece of it)

    @property
    def prefix(self) -> str:
        """Every file of this task starts with this."""
        return f"{self.index:05d}-"


def plan_tasks(sources: Sequence[tuple[int, Source]], task_bytes: int) -> list[Task]:
    """Cut sources into pieces of about ``task_bytes`` and group small neighbours into tasks."""
    weighted: list[tuple[int, Source, int]] = []
    for position, source in sources:
        size = source_size(source)
        pieces = UNSIZED_PIECES if size is None else -(-size // task_bytes)
        parts = source.split(pieces) if pieces > 1 else [source]
        weight = task_bytes if size is None else max(1, size // len(parts))
        weighted += [(position, part, weight) for part in parts]
    tasks: list[Task] = []
    current: list[tuple[int, Source]] = []
    filled = 0
    for position, part, weight in weighted:
        if current and filled + weight > task_bytes:
            tasks.append(Task(len(tasks), tuple(current)))
            current, filled = [], 0
        current.append((position, part))
        filled += weight
    if current:
        tasks.append(Task(len(tasks), tuple(current)))
    return tasks


def source_size(source: Source) -> int | None:
    """Bytes of input: the source's ``nbytes()`` when it has one, else its file's size."""
    nbytes = getattr(source, "nbytes", None)
    if nbytes is not None:
        return int(nbytes())
    return os.path.getsize(source.spec) if os.path.isfile(source.spec) else None


@dataclass(frozen=True)
class TaskSettings:
    """Everything a task needs besides its pieces; plain values, so it travels to any process."""

    out_dir: str
    config_fingerprint: str
    format: str
    fields: dict[str, str]
    normalize: bool
    train_on_prompt: bool
    max_doc_tokens: int | None
    on_error: str
    val_fraction: float
    seed: int
    dedup: bool
    splits: tuple[str, ...]
    shard_format: str
    dtype: str
    tokens_per_shard: int
    tokenizer: str  # the tokenizer family's name; the tokenizer itself is the dataset's copy
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    engine: str = "auto"


class TaskRunner:
    """Runs one task (``runner(task)`` → a short summary); picklable, for other processes.

    The tokenizer is loaded once per process from the copy saved in the dataset directory, so
    every worker encodes with exactly the same tokenizer, offline.
    """

    def __init__(
        self,
        settings: TaskSettings,
        manager: PluginManager | None = None,
        progress: Callable[[int], None] | None = None,
        announce: Callable[[str], None] | None = None,
    ):
        self.settings = settings
        self.manager = manager
        self.progress = progress  # documents done, as they are done
        self.announce = announce  # news for the log (the format chosen for a source)

    def __getstate__(self) -> dict[str, Any]:
        # A manager, a progress bar and a logger stay in their process; a worker discovers its
        # plugins, and its news reach the log through the task's record.
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def __call__(self, task: Task) -> dict[str, Any]:
        manager = self.manager or get_manager()
        tok = _tokenizer(self.settings, manager)
        summary = run_task(task, self.settings, tok, manager, self.progress, self.announce)
        return {**summary, "progress_shown": self.progress is not None}


_loaded: dict[tuple[str, str, str], Tokenizer] = {}


def _tokenizer(settings: TaskSettings, manager: PluginManager) -> Tokenizer:
    key = (settings.out_dir, settings.config_fingerprint, settings.engine)
    if key not in _loaded:
        from gristmill.layout import TOKENIZER_DIR

        _loaded.clear()  # one dataset at a time per process
        family = manager.tokenizer(settings.tokenizer)
        _loaded[key] = family.load(
            Path(settings.out_dir) / TOKENIZER_DIR,
            settings.tokenizer_config,
            engine=settings.engine,
        )
    return _loaded[key]


def task_file(out_dir: Path, task: int | Task, name: str) -> Path:
    index = task.index if isinstance(task, Task) else task
    return out_dir / TASKS_DIR / f"{index:05d}-{name}"


class _SplitLog:
    """What a task wrote to one split, beyond the shards: which source each run of documents
    came from, and per document its digest and metadata row."""

    def __init__(self) -> None:
        self.sources: list[list[int]] = []  # [[source position, documents], ...] in order
        self.digests: list[bytes] = []
        self.metadata: list[int] = []  # row of the task's metadata table, -1 for none

    def add_source(self, position: int, documents: int) -> None:
        if self.sources and self.sources[-1][0] == position:
            self.sources[-1][1] += documents
        else:
            self.sources.append([position, documents])


def run_task(
    task: Task,
    settings: TaskSettings,
    tok: Tokenizer,
    manager: PluginManager,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read, map and tokenize the task's pieces; write its shards, then its record."""
    out_dir = Path(settings.out_dir)
    fmt = manager.shard_format(settings.shard_format)
    writers = {
        split: fmt.writer(
            out_dir,
            split,
            dtype=np.dtype(settings.dtype),
            tokens_per_shard=settings.tokens_per_shard,
            prefix=task.prefix,
        )
        for split in settings.splits
    }
    logs = {split: _SplitLog() for split in settings.splits}
    table: dict[tuple[tuple[str, object], ...], int] = {}  # metadata → row
    formats: dict[int, str] = {}
    documents = truncated = 0
    policy = ErrorPolicy(settings.on_error, task_file(out_dir, task, "rejects.jsonl"))
    keep_digests = settings.dedup or settings.val_fraction > 0
    try:
        for position, piece in task.pieces:

            def report(message: str, position: int = position) -> None:
                formats.setdefault(position, message)
                if announce is not None:
                    announce(message)

            examples = mapped_examples(
                piece, settings.format, settings.fields, manager, policy, report=report
            )
            batches = encoded_batches(
                examples,
                tok,
                policy,
                normalize=settings.normalize,
                train_on_prompt=settings.train_on_prompt,
                max_doc_tokens=settings.max_doc_tokens,
            )
            for ids, masks, metadata, cut in batches:
                truncated += cut
                digests = [digest(d, m) for d, m in zip(ids, masks)] if keep_digests else []
                # One split: every document; two: each by the hash of its content.
                splits = (
                    assign_splits(digests, settings.seed, settings.val_fraction)
                    if len(settings.splits) > 1
                    else None
                )
                for split in settings.splits:
                    pick = (
                        range(len(ids))
                        if splits is None
                        else np.flatnonzero(splits == split).tolist()
                    )
                    if not pick:
                        continue
                    writers[split].add([ids[i] for i in pick], [masks[i] for i in pick])
                    log = logs[split]
                    log.add_source(position, len(pick))
                    if settings.dedup:
                        log.digests += [digests[i] for i in pick]
                    log.metadata += [
                        -1 if metadata[i] is None else table.setdefault(metadata[i], len(table))
                        for i in pick
                    ]
                documents += len(ids)
                if progress is not None:
                    progress(len(ids))
        shards = {split: writer.close() for split, writer in writers.items()}
    except BaseException:
        policy.abort()
        raise
    skipped = policy.close()
    record: dict[str, Any] = {
        "task": task.index,
        "config_fingerprint": settings.config_fingerprint,
        "documents": documents,
        "truncated": truncated,
        "skipped": skipped,
        "formats": {str(k): v for k, v in sorted(formats.items())},
        "metadata": [list(map(list, row)) for row in table],
        "splits": {},
    }
    for split, log in logs.items():
        entry: dict[str, Any] = {"shards": shards[split], "sources": log.sources}
        if settings.dedup:
            entry["digests"] = _save(out_dir, task, f"{split}.digests", b"".join(log.digests))
        if table:
            rows = np.asarray(log.metadata, dtype="<i4")
            entry["metadata"] = _save(out_dir, task, f"{split}.metadata", rows.tobytes())
        record["splits"][split] = entry
    # The record says the task is done: everything it names must be durable first.
    for directory in (*settings.splits, TASKS_DIR):
        sync_directory(out_dir / directory)
    write_atomic(task_file(out_dir, task, "record.json"), canonical_json(record))
    return {"task": task.index, "documents": documents}


def _save(out_dir: Path, task: Task, name: str, data: bytes) -> str:
    path = task_file(out_dir, task, name)
    write_atomic(path, data, sync_directory_too=False)
    return path.name


def read_record(out_dir: Path, task: int) -> dict[str, Any] | None:
    try:
        record = json.loads(task_file(out_dir, task, "record.json").read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
