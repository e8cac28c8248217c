"""``prepare``: sources → examples → token documents → shards on disk, with a manifest written last.

The work is cut into deterministic tasks (:mod:`gristmill.store.tasks`) that an executor runs, here or
in worker processes; a crashed run resumes from its finished tasks (:mod:`gristmill.store.claim`); the
tasks' records are merged into the manifest (:mod:`gristmill.store.merge`).
"""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gristmill._version import __version__
from gristmill.errors import DataError, DatasetError
from gristmill.ingest.chain import check_schemas
from gristmill.ingest.mapping import check_fields
from gristmill.ingest.plan import Chunk, plan_chunks, planned_chunks
from gristmill.ingest.policy import ErrorPolicy, describe_passed
from gristmill.ingest.records import source_inputs
from gristmill.ingest.sources import (
    Input,
    open_sources,
    presets_tokenizer,
    sampling,
    with_preset_defaults,
)
from gristmill.ingest.splits import kept_splits, planned_splits
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.layout import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    TASKS_DIR,
    TOKENIZER_DIR,
    reject_file,
)
from gristmill.options import PrepareOptions, takes
from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import (
    Executor,
    ExecutorType,
    FieldMapperType,
    HasFingerprint,
    Rejected,
    RendersChat,
    ShardFormatType,
    Source,
    Tokenizer,
    TokenizerType,
)
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.plugin.remote import is_remote
from gristmill.plugin.workers import trim_memory
from gristmill.store.claim import Claim
from gristmill.store.manifest import new_generation, saved_files, write_manifest
from gristmill.store.merge import Merged, merge
from gristmill.store.tasks import (
    TaskRunner,
    TaskSettings,
    first_batch_handoff,
    read_record,
    release_tasks,
    warm_up,
)

if TYPE_CHECKING:
    from gristmill.ingest.records import Sources
    from gristmill.store.upload import Upload

log = logging.getLogger("gristmill")


@takes(PrepareOptions)
def prepare(
    sources: Sources,
    out: str | os.PathLike[str],
    options: PrepareOptions,
    *,
    manager: PluginManager | None = None,
) -> dict[str, Any]:
    """Tokenize ``sources`` into a dataset directory ``out``; return its manifest.

    Running it again with the same sources and settings finds the dataset up to date and does
    nothing; different settings are refused unless ``overwrite``. ``progress=None`` shows a progress
    bar only on a terminal.

    ``out`` may be a URL (``s3://``, ``gs://``…; :mod:`gristmill.store.upload`): the dataset is
    prepared in a scratch directory in gristmill's cache folder, then uploaded file by file, the
    manifest last; the same command resumes an interrupted prepare or upload, and removes the
    scratch directory once the manifest has landed unless ``keep_scratch``.
    ``storage_options`` go to the URL's fsspec filesystem. ``on_error="fail"`` raises :class:`~gristmill.errors.DataError` naming
    the file, line and field of the first bad record; ``"skip"`` counts bad records per reason
    (``manifest["provenance"]["skipped"]``) and writes them to ``OUT.rejects.jsonl``.

    The input is cut into tasks of about ``task_bytes`` that ``workers`` processes run (default:
    one per CPU, at most one per task); the output is the same for any ``workers`` or
    ``executor``. An interrupted run, run again with the same arguments, redoes only the
    unfinished tasks. ``engine`` picks the tokenizer's encoding engine where its family offers
    several (``auto``: the fastest that agrees with the reference); it never changes the ids, and the
    documents a fast engine leaves to the reference are counted in the log.
    With more than one worker, plugins come from installed distributions (entry points), not
    from ``manager`` registrations made in this process. ``executor_options`` go to the
    executor's factory, e.g. ``{"address": "HOST:PORT"}`` for ``ray`` (docs/executors.md);
    ``tokenizer_options`` to the tokenizer's (``{"add_bos": True}`` for ``byte``),
    ``source_options`` to every source's (``{"columns": ["text"]}`` for ``parquet``). Each
    component declares the options it takes (``gristmill plugins --all``); any other key is an
    :class:`~gristmill.errors.OptionError`.

    ``sources`` are specs (files, globs, directories, ``hub:``, ``preset:``, data lists: see
    docs/formats.md) or records in memory: a list of dicts, a ``pyarrow.Table``, a
    ``datasets.Dataset`` or ``IterableDataset``, or any iterable of dicts (read once, in one
    task), alone or in a list beside specs.
    """
    manager = manager or get_manager()
    inputs = source_inputs(sources)
    upload = _upload(out, options)
    out_dir = Path(out) if upload is None else upload.dataset
    try:
        run = _resolve(inputs, out_dir, options, manager, warm=not (upload and upload.existing))
        try:
            assert run.tok is not None, "the tokenizer is released only once it is saved"
            config_fp = config_fingerprint(run.options, run.provenance, run.tok)
            if upload is None:
                return _claim_and_write(run, out_dir, config_fp, manager)
            return upload.run(config_fp, lambda: _claim_and_write(run, out_dir, config_fp, manager))
        finally:
            _close(run.started)  # a pool started early that ran nothing (an error came first)
            release_tasks()
    finally:
        if upload is not None:
            upload.release()


def _upload(out: str | os.PathLike[str], options: PrepareOptions) -> Upload | None:
    """The upload of an output at a URL (:mod:`gristmill.store.upload`); ``None`` for a local
    directory, which takes none of the options of a URL."""
    if is_remote(out):
        from gristmill.store.upload import Upload

        return Upload(os.fspath(out), options)
    given = [name for name in ("storage_options", "keep_scratch") if getattr(options, name)]
    if given:
        raise DatasetError(
            f"{' and '.join(given)} apply to an output at a URL (s3://, gs://…); this is a "
            "local directory",
            where=str(out),
        )
    return None


def _claim_and_write(
    run: Resolved, out_dir: Path, config_fp: str, manager: PluginManager
) -> dict[str, Any]:
    options = run.options
    claim = Claim(out_dir, config_fp, options.overwrite)
    if claim.up_to_date is not None:
        log.info(f"{out_dir}: already prepared from these sources and settings; nothing to do")
        return claim.up_to_date
    try:
        manifest = _write(claim, run, options, config_fp, manager)
    except KeyboardInterrupt:
        raise  # interrupted, not failed: the same command resumes, another one is refused
    except BaseException as exc:
        claim.failed(exc)
        raise
    finally:
        claim.release()
    return manifest


@dataclass
class Resolved:
    """What a run resolves before it touches the output directory, so that a typo fails first."""

    options: PrepareOptions  # the caller's, with the presets' defaults
    opened: list[Source]
    problems: list[Rejected | DataError | None]  # per source: why it is not read, or None
    provenance: list[dict[str, Any]]
    # None once saved into the dataset: the main process encodes only the first batch (to check
    # a fast engine once), its workers load the saved copy, and the library's tokenizer is tens
    # of MiB.
    tok: Tokenizer | None
    tokenizer_type: TokenizerType
    fmt: ShardFormatType
    executor: ExecutorType
    executor_options: dict[str, Any]
    started: Executor | None = None  # the executor, its workers already starting (_start_early)


def _resolve(
    specs: Sequence[Input],
    out: str | os.PathLike[str],
    given: PrepareOptions,
    manager: PluginManager,
    warm: bool = True,
) -> Resolved:
    options = with_preset_defaults(given, specs, manager)
    opened = open_sources(
        specs,
        manager,
        options.source_options,
        output=out,
        max_record_bytes=options.max_record_bytes,
        column_names=options.column_names,
    )
    opened, own_splits = kept_splits(opened, options)
    assert options.tokenizer is not None, "prepare resolves it first (with_preset_defaults)"
    tokenizer_type = resolve_tokenizer(options.tokenizer, manager)
    tokenizer_options = tokenizer_type.check_options(options.tokenizer_options)
    _check_engine(options.engine, tokenizer_type)
    fmt = manager.get(ShardFormatType, options.shard_format)
    executor = manager.get(ExecutorType, options.executor)
    executor_options = executor.check_options(options.executor_options)
    if options.format != "auto":
        check_fields(manager.get(FieldMapperType, options.format), options.fields)
    if options.dedup and any(sampling(s).get("ratio", 1) > 1 for s in opened):
        raise DataError(
            "a data list's ratio above 1 repeats records, which dedup would drop again: "
            "give one or the other"
        )
    # The workers start up (interpreters, imports, plugins) while this process reads every
    # input byte for the fingerprints and loads the tokenizer.
    started = _start_early(executor, executor_options, options, opened, Path(out)) if warm else None
    try:
        provenance = _provenance(opened, own_splits)
        # Sources whose schema drifts or cannot be read: fatal now under "fail", skipped later.
        refused = check_schemas(opened, options.on_error)
        problems = [refused.get(position) for position in range(len(opened))]
        with presets_tokenizer(given.tokenizer, specs, manager):
            tok = tokenizer_type.factory(
                options.tokenizer, engine=options.engine, **tokenizer_options
            )
    except BaseException:
        _close(started)
        raise
    return Resolved(
        options,
        opened,
        problems,
        provenance,
        tok,
        tokenizer_type,
        fmt,
        executor,
        executor_options,
        started,
    )


def _check_engine(engine: str, tokenizer_type: TokenizerType) -> None:
    if engine != "auto" and engine not in tokenizer_type.engines:
        offered = ", ".join(("auto", *tokenizer_type.engines))
        raise DataError(
            f"the {tokenizer_type.name} tokenizer has no engine {engine!r}; choose from {offered}"
        )


def _provenance(opened: list[Source], own_splits: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per source its spec and fingerprint (every input byte is read), its sampling and split."""
    return [
        {"spec": s.spec, "fingerprint": s.fingerprint(), **sampling(s), **own}
        for s, own in zip(opened, own_splits)
    ]


def _start_early(
    executor: ExecutorType,
    executor_options: dict[str, Any],
    options: PrepareOptions,
    opened: list[Source],
    out_dir: Path,
) -> Executor | None:
    """The executor with its workers starting, when the run will have work for them and the
    executor can start ahead of its tasks (``start(warm)``); else None, and it is made when the
    tasks are known. The work is foreseen from the sources' sizes (none read): several tasks'
    worth, and no dataset in ``out_dir`` yet (one there may be up to date: nothing to run)."""
    foreseen = planned_chunks(opened, options.task_bytes)
    workers = min(foreseen or 0, options.workers or available_cpus())
    if workers < 2 or not callable(getattr(executor.factory, "start", None)):
        return None
    if (out_dir / MANIFEST).exists():
        return None
    started = executor.factory(workers=workers, **executor_options)
    started.start(warm_up)  # type: ignore[attr-defined]
    return started


def _close(executor: Executor | None) -> None:
    close = getattr(executor, "close", None)
    if close is not None:
        close()


def config_fingerprint(
    options: PrepareOptions, provenance: list[dict[str, Any]], tok: Tokenizer
) -> str:
    """What "already prepared" compares: the format, the options that change the output, the
    sources and the tokenizer."""
    # A tokenizer that can say when its files changed (hf:DIR re-trained in place) takes part.
    return fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "config": options.output(),
            "sources": provenance,
            "tokenizer": tok.fingerprint() if isinstance(tok, HasFingerprint) else None,
        }
    )


def _write(
    claim: Claim, run: Resolved, options: PrepareOptions, config_fp: str, manager: PluginManager
) -> dict[str, Any]:
    out_dir = claim.out_dir
    (out_dir / TOKENIZER_DIR).mkdir(exist_ok=True)
    assert run.tok is not None
    tok_config = run.tok.save(out_dir / TOKENIZER_DIR)
    dtype = np.dtype(np.uint16 if run.tok.vocab_size <= 1 << 16 else np.uint32)
    described = _tokenizer_entry(run.tok, run.tokenizer_type, options, tok_config)
    # Every asked-for split exists in the output, even if the hash leaves it empty.
    splits, source_splits = planned_splits(options, run.provenance)
    for directory in (*splits, TASKS_DIR):
        (out_dir / directory).mkdir(exist_ok=True)
    admitted = [(i, s) for i, (s, why) in enumerate(zip(run.opened, run.problems)) if why is None]
    tasks = plan_chunks(admitted, options.task_bytes)
    done = claim.finished_tasks(len(tasks), splits)
    handoff = _let_tokenizer_go(run, tasks, done, manager)
    # Sources refused by the schema check (under --on-error skip) are recorded after the clean-up.
    policy = ErrorPolicy(options.on_error, out_dir / TASKS_DIR / "schema-rejects.jsonl")
    for problem in run.problems:
        if problem is not None:
            policy.handle(problem)
    main_skipped = policy.close()
    settings = TaskSettings(
        str(out_dir),
        config_fp,
        options,
        splits,
        dtype.name,
        run.tokenizer_type.name,
        tok_config,
        source_splits,
        tokenizer_handoff=handoff,
    )
    announced: set[str] = set()

    def announce(message: str) -> None:
        if message not in announced:  # once per source, not once per part of it
            announced.add(message)
            log.info(message)

    fallbacks = _run_tasks(settings, run, options, tasks, done, manager, announce)
    merged = merge(settings, len(tasks), len(run.opened), run.fmt, main_skipped, announce)
    _log_merged(out_dir, merged, options, fallbacks)
    if not sum(entry["num_documents"] for entry in merged.splits.values()):
        raise DataError(
            "the sources hold no usable records: "
            + ", ".join(entry["spec"] for entry in run.provenance)
        )
    _count_documents(run.provenance, merged.records)
    manifest = write_manifest(
        out_dir, _manifest(out_dir, run, options, merged, config_fp, described, dtype.name)
    )
    claim.finish()
    totals = ", ".join(
        f"{s}: {e['num_documents']:,} documents, {e['num_tokens']:,} tokens"
        for s, e in merged.splits.items()
    )
    log.info(f"{out_dir}: wrote {totals}")
    return manifest


def _let_tokenizer_go(
    run: Resolved, tasks: list[Chunk], done: set[int], manager: PluginManager
) -> dict[str, Any]:
    """What the workers' copies of the run's tokenizer take on trust, once it has encoded the
    first batch of the first task to run (first_batch_handoff: a fast engine checked once,
    here, while the workers start); then the tokenizer goes (see Resolved)."""
    assert run.tok is not None
    first = next((task for task in tasks if task.index not in done), None)
    handoff = first_batch_handoff(run.tok, first, run.options, manager)
    run.tok = None
    # A tokenizer's objects may refer to one another (its engine calls back into it): freed by
    # a collection now, before trim_memory, not at one that may come too late for the workers.
    gc.collect()
    trim_memory()
    return handoff


def _run_tasks(
    settings: TaskSettings,
    run: Resolved,
    options: PrepareOptions,
    tasks: list[Chunk],
    done: set[int],
    manager: PluginManager,
    announce: Callable[[str], None],
) -> Counter[str]:
    """Run the tasks not ``done`` on the run's executor, counting documents on a progress bar;
    the documents of every task that the tokenizer's reference engine encoded, per reason
    (those of the tasks ``done`` before from their records)."""
    pending = [task for task in tasks if task.index not in done]
    fallbacks: Counter[str] = Counter()
    for index in done:
        record = read_record(Path(settings.out_dir), index) or {}
        fallbacks.update(record.get("by_reference", {}))
    workers = max(1, min(len(pending), options.workers or available_cpus()))
    with progress_bar(options.progress) as bar:
        if len(done):
            bar.set_postfix_str(f"{len(done)} of {len(tasks)} tasks done before")
        runner = TaskRunner(settings, manager, progress=bar.update, announce=announce)
        executor = run.started or run.executor.factory(workers=workers, **run.executor_options)
        run.started = None  # map owns its workers now
        for summary in executor.map(runner, pending):
            fallbacks.update(summary.get("by_reference", {}))  # an executor may pass less
            if not summary["progress_shown"]:  # it ran in another process
                bar.update(summary["documents"])
    return fallbacks


def progress_bar(
    shown: bool | None, desc: str = "prepare", unit: str = " docs", total: int | None = None
) -> Any:
    """tqdm's bar (``None``: on a terminal only); with progress off, not even tqdm is loaded.
    A ``unit`` of ``B`` counts bytes, shown in KiB, MiB…"""
    if shown is False:
        return _NoBar()
    from tqdm.auto import tqdm

    scaled = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    return tqdm(
        desc=desc, unit=unit, total=total, disable=None if shown is None else not shown, **scaled
    )


class _NoBar:
    """The bar when progress is off: it shows and counts nothing."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, count: int) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


def _count_documents(provenance: list[dict[str, Any]], documents: list[int]) -> None:
    """Each source's documents into its provenance entry; those read at a data list's ratio
    also to the log."""
    for entry, count in zip(provenance, documents):
        entry["records"] = count
        if "ratio" in entry:
            log.info(
                f"{entry['list']}: entry {entry['entry']} ({entry['spec']}) at ratio "
                f"{entry['ratio']:g}: {count:,} documents"
            )


def _log_merged(
    out_dir: Path, merged: Merged, options: PrepareOptions, fallbacks: Counter[str]
) -> None:
    if merged.skipped:
        total = sum(merged.skipped.values())
        reasons = ", ".join(f"{k}: {v:,}" for k, v in merged.skipped.items())
        log.warning(
            f"{out_dir}: skipped {total:,} record(s) ({reasons}); see {reject_file(out_dir)}"
        )
    if merged.passed_over:
        log.info(f"{out_dir}: {describe_passed(merged.passed_over)}")
    if options.dedup:
        log.info(f"{out_dir}: dropped {merged.duplicates:,} exact duplicate document(s)")
    if merged.truncated:
        log.info(
            f"{out_dir}: truncated {merged.truncated:,} document(s) to "
            f"{options.max_doc_tokens:,} tokens"
        )
    _log_fallbacks(out_dir, fallbacks)


def _log_fallbacks(out_dir: Path, fallbacks: Counter[str]) -> None:
    """How many documents the tokenizer's reference engine encoded because the fast one could
    not vouch for them (their ids are the same; only the speed differs)."""
    if fallbacks:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(fallbacks.items()))
        log.info(
            f"{out_dir}: {fallbacks.total():,} document(s) encoded with the tokenizer's reference "
            f"engine, which the fast engine could not vouch for ({reasons})"
        )


def _tokenizer_entry(
    tok: Tokenizer, family: TokenizerType, options: PrepareOptions, config: dict[str, Any]
) -> dict[str, Any]:
    """The manifest's ``tokenizer`` entry, less the saved files."""
    return {
        "name": family.name,
        "spec": options.tokenizer,
        "config": config,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "add_bos": tok.add_bos,
        "add_eos": tok.add_eos,
        # How chat examples are rendered: the tokenizer's own template, or gristmill's.
        "chat_template": "tokenizer" if isinstance(tok, RendersChat) else "built-in",
    }


def _manifest(
    out_dir: Path,
    run: Resolved,
    options: PrepareOptions,
    merged: Merged,
    config_fp: str,
    tokenizer: dict[str, Any],
    dtype: str,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gristmill_version": __version__,
        "shard_format": {"name": run.fmt.name, "version": run.fmt.format_version},
        "config_fingerprint": config_fp,
        "fingerprint": fingerprint([config_fp, merged.splits]),
        "generation": new_generation(),
        "dtype": dtype,
        "tokenizer": {**tokenizer, "files": saved_files(out_dir)},
        "splits": merged.splits,
        # Only where documents have metadata: other manifests stay as they were before it.
        **({"metadata": merged.columns.columns} if merged.columns else {}),
        "stats": {"metadata": merged.metadata},
        "provenance": {
            "sources": run.provenance,
            "config": options.output(),
            "skipped": merged.skipped,
            "duplicates": merged.duplicates,
            "truncated": merged.truncated,
            # Only when there are any: the manifests of sources that leave nothing out stay as
            # they were before the key existed.
            **({"passed_over": merged.passed_over} if merged.passed_over else {}),
        },
    }


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
