"""Prepare's unit of work: a task reads one chunk of the input and writes its own shards.

The chunks are planned from the input alone (its size, never the worker count; see
:mod:`gristmill.ingest.plan`), a task's number is its chunk's index, and its output depends on
its chunk alone; the manifest lists the tasks' shards in task order. So a dataset is
byte-identical whatever the number of workers or the executor, and after a crash only the tasks
that left no record are run again.

A task's files: its shards ``SPLIT/TTTTT-SSSSS.*`` and, in ``.gristmill-tasks/``, its record
``TTTTT-record.json`` (written last, atomically: the task is done when it exists; it also counts
the documents the tokenizer's reference engine encoded, for the summary), its skipped records
``TTTTT-rejects.jsonl``, and per split the documents' digests (with ``dedup``) and
metadata columns (:mod:`gristmill.store.metadata`). The record names everything; ``prepare`` merges the records into the manifest.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import first_line
from gristmill.ingest.chain import document_batches
from gristmill.ingest.encoding import Batch, digest
from gristmill.ingest.plan import Chunk
from gristmill.ingest.policy import ErrorPolicy
from gristmill.ingest.records import OneShot
from gristmill.ingest.splits import assign_splits
from gristmill.layout import TASKS_DIR
from gristmill.options import PrepareOptions
from gristmill.plugin.atomic import canonical_json, sync_directory, write_atomic
from gristmill.plugin.components import ShardFormatType, Tokenizer, TokenizerType
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.plugin.workers import trim_memory
from gristmill.store.metadata import ColumnLog

log = logging.getLogger("gristmill")


@dataclass(frozen=True)
class TaskSettings:
    """Everything a task needs besides its chunk; plain values, so it travels to any process."""

    out_dir: str
    config_fingerprint: str
    options: PrepareOptions
    splits: tuple[str, ...]
    dtype: str
    tokenizer: str  # the tokenizer family's name; the tokenizer itself is the dataset's copy
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    # Per source position, the split of its own that the run keeps (None, or no entry at all:
    # its documents are shared out by the fractions).
    source_splits: tuple[str | None, ...] = ()
    # What the workers' copies of the tokenizer take on trust (keywords of the family's load):
    # the main process's tokenizer learned it on the run's first batch (first_batch_handoff).
    tokenizer_handoff: dict[str, Any] = field(default_factory=dict)


class TaskRunner:
    """Runs one task (``runner(chunk)`` → a short summary); picklable, for other processes.

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

    def __call__(self, chunk: Chunk) -> dict[str, Any]:
        manager = self.manager or get_manager()
        tok = _tokenizer(self.settings, manager)
        summary = run_task(chunk, self.settings, tok, manager, self.progress, self.announce)
        # What the task freed (its shards' arrays, its batches) goes back to the system: a
        # worker's heap would otherwise keep its high-water mark, and creep task after task.
        trim_memory()
        return {**summary, "progress_shown": self.progress is not None}


_loaded: dict[tuple[str, str, str], Tokenizer] = {}


def warm_up() -> None:
    """What a worker can load before its first task: the modules a task runs and the plugins
    (the tokenizer families among them). Its tokenizer comes with the first task: it is the
    dataset's copy, which may not be written yet."""
    get_manager()


def release_tasks() -> None:
    """Forget this process's tokenizer (a run that ran its tasks here is over)."""
    _loaded.clear()
    trim_memory()


def _tokenizer(settings: TaskSettings, manager: PluginManager) -> Tokenizer:
    engine = settings.options.engine
    key = (settings.out_dir, settings.config_fingerprint, engine)
    if key not in _loaded:
        from gristmill.layout import TOKENIZER_DIR

        _loaded.clear()  # one dataset at a time per process
        family = manager.get(TokenizerType, settings.tokenizer)
        _loaded[key] = family.load(
            Path(settings.out_dir) / TOKENIZER_DIR,
            settings.tokenizer_config,
            **{"engine": engine, **settings.tokenizer_handoff},
        )
    return _loaded[key]


def first_batch_handoff(
    tok: Tokenizer, chunk: Chunk | None, options: PrepareOptions, manager: PluginManager
) -> dict[str, Any]:
    """What the workers' copies of ``tok`` may take on trust, once ``tok`` has encoded the first
    batch of ``chunk`` (the first task the run will run) here: a tokenizer that checks a fast
    engine against its reference on first use checks it once, on the run's own data, rather than
    once in every worker, which then never loads the reference for that (``handoff()`` of such
    tokenizers; an empty dict from others, and when the batch cannot be read here: each worker
    then checks on its own first batch). The batch is thrown away: its task encodes it again,
    and reports its bad records. Records from an iterator, which can be read only once, are
    left to their task."""
    handoff = getattr(tok, "handoff", None)
    if not callable(handoff) or chunk is None or not chunk.parts:
        return {}
    _, part = chunk.parts[0]
    if isinstance(part, OneShot):
        return {}
    batches = document_batches(part, tok, options, manager, ErrorPolicy("skip", None), _unheard)
    try:
        next(iter(batches), None)
    except Exception as exc:  # the task meets it again, and reports it
        log.debug(f"the tokenizer's first batch, encoded before the tasks: {first_line(exc)}")
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return dict(handoff())


def _unheard(message: str) -> None:
    """News of a batch read only for the tokenizer (its task announces them)."""


def task_prefix(index: int) -> str:
    """Every file of task ``index`` starts with this."""
    return f"{index:05d}-"


def task_file(out_dir: Path, index: int, name: str) -> Path:
    return out_dir / TASKS_DIR / f"{task_prefix(index)}{name}"


class _SplitLog:
    """What a task wrote to one split, beyond the shards: which source each run of documents
    came from, and per document its digest and metadata."""

    def __init__(self) -> None:
        self.sources: list[list[int]] = []  # [[source position, documents], ...] in order
        self.digests: list[bytes] = []
        self.metadata = ColumnLog()

    def add_source(self, position: int, documents: int) -> None:
        if self.sources and self.sources[-1][0] == position:
            self.sources[-1][1] += documents
        else:
            self.sources.append([position, documents])


def run_task(
    chunk: Chunk,
    settings: TaskSettings,
    tok: Tokenizer,
    manager: PluginManager,
    progress: Callable[[int], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Read, map and tokenize the chunk's parts; write the task's shards, then its record."""
    out_dir = Path(settings.out_dir)
    output = _TaskOutput(chunk.index, settings, manager)
    before = by_reference(tok)
    options = settings.options
    formats: dict[int, str] = {}
    policy = ErrorPolicy(options.on_error, task_file(out_dir, chunk.index, "rejects.jsonl"))
    try:
        for position, part in chunk.parts:

            def report(message: str, position: int = position) -> None:
                formats.setdefault(position, message)
                if announce is not None:
                    announce(message)

            for batch in document_batches(part, tok, options, manager, policy, report):
                output.add(position, batch)
                if progress is not None:
                    progress(len(batch[0]))
        shards = output.close()
    except BaseException:
        policy.abort()
        raise
    record = output.record(shards, policy.close(), formats)
    record["passed_over"] = policy.passed_over()
    record["by_reference"] = dict(sorted((by_reference(tok) - before).items()))
    # The record says the task is done: everything it names must be durable first.
    for directory in (*settings.splits, TASKS_DIR):
        sync_directory(out_dir / directory)
    write_atomic(task_file(out_dir, chunk.index, "record.json"), canonical_json(record))
    return {
        "task": chunk.index,
        "documents": record["documents"],
        "by_reference": record["by_reference"],
    }


def by_reference(tok: Tokenizer) -> Counter[str]:
    """The documents ``tok`` has encoded with its reference engine although a faster one was in
    use, per reason, so far (``by_reference()`` of the tokenizers that have engines): the same
    ids, more slowly, which prepare's summary counts."""
    counted = getattr(tok, "by_reference", None)
    return Counter(counted()) if callable(counted) else Counter()


class _TaskOutput:
    """What a task writes as it reads: per split its shards and :class:`_SplitLog`."""

    def __init__(self, index: int, settings: TaskSettings, manager: PluginManager):
        self.index, self.settings = index, settings
        fmt = manager.get(ShardFormatType, settings.options.shard_format)
        self.writers = {
            split: fmt.writer(
                Path(settings.out_dir),
                split,
                dtype=np.dtype(settings.dtype),
                tokens_per_shard=settings.options.tokens_per_shard,
                prefix=task_prefix(index),
            )
            for split in settings.splits
        }
        self.logs = {split: _SplitLog() for split in settings.splits}
        self.dtype = np.dtype(settings.dtype)
        options = settings.options
        self.dedup, self.fractions = options.dedup, (options.val_fraction, options.test_fraction)
        self.keep_digests = self.dedup or any(self.fractions)
        self.documents = self.truncated = 0

    def add(self, position: int, batch: Batch) -> None:
        """A batch of documents of the source at ``position``, each to its split."""
        ids, masks, metadata, cut = batch
        settings = self.settings
        self.truncated += cut
        self.documents += len(ids)
        digests = [digest(d, m) for d, m in zip(ids, masks)] if self.keep_digests else []
        ids = _narrowed(ids, self.dtype)
        splits = self._splits(position, digests, len(ids))
        for split in settings.splits:
            pick = np.flatnonzero(splits == split).tolist()
            if not pick:
                continue
            self.writers[split].add([ids[i] for i in pick], [masks[i] for i in pick])
            log = self.logs[split]
            log.add_source(position, len(pick))
            if self.dedup:
                log.digests += [digests[i] for i in pick]
            for i in pick:
                log.metadata.add(metadata[i])

    def _splits(self, position: int, digests: list[bytes], count: int) -> np.ndarray:
        """The split of each of ``count`` documents of the source at ``position``: the source's
        own (kept, and not train), else each by the hash of its content where fractions ask for
        it, else train."""
        own = self.settings.source_splits
        kept = own[position] if position < len(own) else None
        if kept in (None, "train") and any(self.fractions):
            return assign_splits(digests, self.settings.options.seed, *self.fractions)
        return np.full(count, kept or "train")

    def close(self) -> dict[str, Any]:
        """Close the shard writers; their shards, per split."""
        return {split: writer.close() for split, writer in self.writers.items()}

    def record(
        self, shards: dict[str, Any], skipped: dict[str, int], formats: dict[int, str]
    ) -> dict[str, Any]:
        """The task's record, once its side files (digests, metadata columns) are written."""
        record: dict[str, Any] = {
            "task": self.index,
            "config_fingerprint": self.settings.config_fingerprint,
            "documents": self.documents,
            "truncated": self.truncated,
            "skipped": skipped,
            "formats": {str(k): v for k, v in sorted(formats.items())},
            "splits": {},
        }
        for split, log in self.logs.items():
            entry: dict[str, Any] = {"shards": shards[split], "sources": log.sources}
            if self.dedup:
                entry["digests"] = self._save(f"{split}.digests", b"".join(log.digests))
            path = task_file(Path(self.settings.out_dir), self.index, f"{split}.metadata.npz")
            kinds = log.metadata.save(path)
            if kinds is not None:
                entry["metadata"], entry["metadata_columns"] = path.name, kinds
            record["splits"][split] = entry
        return record

    def _save(self, name: str, data: bytes) -> str:
        path = task_file(Path(self.settings.out_dir), self.index, name)
        write_atomic(path, data, sync_directory_too=False)
        return path.name


def _narrowed(ids: list[np.ndarray], dtype: np.dtype) -> list[np.ndarray]:
    """A batch's documents as the dataset's dtype, which its shards store: the task holds its
    documents until they are written, in half the memory of the engines' uint32. One pass over
    the batch, not one per document (documents may be a few tokens each). When an id does not
    fit, the documents stay as they are, for the shard writer to refuse."""
    if not ids or all(doc.dtype == dtype for doc in ids):
        return ids
    joined = np.concatenate(ids)
    if len(joined) and int(joined.max()) > np.iinfo(dtype).max:
        return ids
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.split(joined.astype(dtype), np.cumsum(lengths[:-1]))


def read_record(out_dir: Path, task: int) -> dict[str, Any] | None:
    try:
        record = json.loads(task_file(out_dir, task, "record.json").read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
