"""``prepare``: sources → examples → token documents → shards on disk, with a manifest written last.

The work is cut into deterministic tasks (:mod:`gristmill.store.tasks`) that an executor runs, here or
in worker processes; a crashed run resumes from its finished tasks (:mod:`gristmill.store.claim`); the
tasks' records are merged into the manifest (:mod:`gristmill.store.merge`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill._version import __version__
from gristmill.errors import DataError
from gristmill.ingest.chain import check_schemas
from gristmill.ingest.mapping import check_fields
from gristmill.ingest.plan import plan_chunks
from gristmill.ingest.policy import POLICIES, ErrorPolicy
from gristmill.ingest.sources import open_sources
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.layout import FORMAT, FORMAT_VERSION, TASKS_DIR, TOKENIZER_DIR, reject_file
from gristmill.plugin.arguments import check_int
from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import (
    DEFAULT_MAX_RECORD_BYTES,
    ExecutorType,
    Rejected,
    ShardFormatType,
    Source,
    Tokenizer,
    TokenizerType,
)
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.store.claim import SPLITS, Claim
from gristmill.store.manifest import new_generation, saved_files, write_manifest
from gristmill.store.merge import merge
from gristmill.store.tasks import DEFAULT_TASK_BYTES, TaskRunner, TaskSettings

log = logging.getLogger("gristmill")

DEFAULT_TOKENS_PER_SHARD = 1 << 26  # 64 Mi tokens: 128 MiB per shard at uint16


def prepare(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    tokenizer: str = "byte",
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD,
    shard_format: str = "memmap-shards",
    train_on_prompt: bool = False,
    normalize: bool = True,
    dedup: bool = False,
    on_error: str = "fail",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    column_names: Sequence[str] | None = None,
    max_doc_tokens: int | None = None,
    engine: str = "auto",
    tokenizer_options: Mapping[str, Any] | None = None,
    source_options: Mapping[str, Any] | None = None,
    workers: int | None = None,
    executor: str = "local",
    executor_options: Mapping[str, Any] | None = None,
    task_bytes: int = DEFAULT_TASK_BYTES,
    overwrite: bool = False,
    progress: bool | None = None,
    manager: PluginManager | None = None,
) -> dict[str, Any]:
    """Tokenize ``sources`` into a dataset directory ``out``; return its manifest.

    Running it again with the same sources and settings finds the dataset up to date and does
    nothing; different settings are refused unless ``overwrite``. ``progress=None`` shows a progress
    bar only on a terminal. ``on_error="fail"`` raises :class:`~gristmill.errors.DataError` naming
    the file, line and field of the first bad record; ``"skip"`` counts bad records per reason
    (``manifest["provenance"]["skipped"]``) and writes them to ``OUT.rejects.jsonl``.

    The input is cut into tasks of about ``task_bytes`` that ``workers`` processes run (default:
    one per CPU, at most one per task); the output is the same for any ``workers`` or
    ``executor``. An interrupted run, run again with the same arguments, redoes only the
    unfinished tasks. ``engine`` picks the tokenizer's encoding engine where its family offers
    several (``auto``: the fastest that agrees with the reference); it never changes the ids.
    With more than one worker, plugins come from installed distributions (entry points), not
    from ``manager`` registrations made in this process. ``executor_options`` go to the
    executor's factory, e.g. ``{"address": "HOST:PORT"}`` for ``ray`` (docs/executors.md);
    ``tokenizer_options`` to the tokenizer's (``{"add_bos": True}`` for ``byte``),
    ``source_options`` to every source's (``{"columns": ["text"]}`` for ``parquet``). Each
    component declares the options it takes (``gristmill plugins --all``); any other key is an
    :class:`~gristmill.errors.OptionError`.
    """
    manager = manager or get_manager()
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    # Plain Python numbers: numpy scalars would not serialise into the manifest.
    val_fraction = float(val_fraction)
    seed = check_int("seed", seed, at_least=None)
    tokens_per_shard = check_int("tokens_per_shard", tokens_per_shard)
    max_record_bytes = check_int("max_record_bytes", max_record_bytes)
    task_bytes = check_int("task_bytes", task_bytes)
    workers = None if workers is None else check_int("workers", workers)
    if max_doc_tokens is not None:
        max_doc_tokens = check_int("max_doc_tokens", max_doc_tokens, at_least=2)
    if on_error not in POLICIES:
        raise DataError(f"on_error must be one of {', '.join(POLICIES)}, got {on_error!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    fields = dict(fields or {})
    # Resolve every component before the output directory is touched.
    column_names = list(column_names) if column_names else None
    opened = open_sources(
        specs,
        manager,
        source_options,
        output=out,
        max_record_bytes=max_record_bytes,
        column_names=column_names,
    )
    tokenizer_type = resolve_tokenizer(tokenizer, manager)
    tokenizer_options = tokenizer_type.check_options(tokenizer_options)
    if engine != "auto" and engine not in tokenizer_type.engines:
        offered = ", ".join(("auto", *tokenizer_type.engines))
        raise DataError(
            f"the {tokenizer_type.name} tokenizer has no engine {engine!r}; choose from {offered}"
        )
    fmt = manager.shard_format(shard_format)
    run_on = manager.executor(executor)
    executor_options = run_on.check_options(executor_options)
    if format != "auto":
        check_fields(manager.field_mapper(format), fields)
    config = {
        "tokenizer": tokenizer,
        "format": format,
        "fields": fields,
        "val_fraction": val_fraction,
        "seed": seed,
        "tokens_per_shard": tokens_per_shard,
        "shard_format": shard_format,
        "train_on_prompt": train_on_prompt,
        "normalize": normalize,
        "dedup": dedup,
        "on_error": on_error,
        "max_record_bytes": max_record_bytes,
        "column_names": column_names,
        "max_doc_tokens": max_doc_tokens,
        "task_bytes": task_bytes,
        # Only when given: datasets prepared without them keep their fingerprint.
        **({"tokenizer_options": tokenizer_options} if tokenizer_options else {}),
        **({"source_options": dict(source_options)} if source_options else {}),
    }
    provenance = [{"spec": s.spec, "fingerprint": s.fingerprint()} for s in opened]
    # Sources whose schema drifts or cannot be read: fatal now under "fail", skipped later.
    refused = check_schemas(opened, on_error)
    problems = [refused.get(position) for position in range(len(opened))]
    tok = tokenizer_type.factory(tokenizer, engine=engine, **tokenizer_options)
    # A tokenizer that can say when its files changed (hf:DIR re-trained in place) takes part.
    tok_fingerprint = getattr(tok, "fingerprint", None)
    config_fp = fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "config": config,
            "sources": provenance,
            "tokenizer": tok_fingerprint() if tok_fingerprint else None,
        }
    )

    out_dir = Path(out)
    claim = Claim(out_dir, config_fp, overwrite)
    if claim.up_to_date is not None:
        log.info(f"{out_dir}: already prepared from these sources and settings; nothing to do")
        return claim.up_to_date
    try:
        manifest = _write(
            claim,
            opened,
            problems,
            tok,
            tokenizer_type,
            fmt,
            config,
            provenance,
            config_fp,
            workers=workers,
            executor=run_on,
            executor_options=executor_options,
            engine=engine,
            progress=progress,
            manager=manager,
        )
    except KeyboardInterrupt:
        raise  # interrupted, not failed: the same command resumes, another one is refused
    except BaseException as exc:
        claim.failed(exc)
        raise
    finally:
        claim.release()
    return manifest


def _write(
    claim: Claim,
    opened: list[Source],
    problems: list[Rejected | DataError | None],
    tok: Tokenizer,
    tokenizer_type: TokenizerType,
    fmt: ShardFormatType,
    config: dict[str, Any],
    provenance: list[dict[str, Any]],
    config_fp: str,
    *,
    workers: int | None,
    executor: ExecutorType,
    executor_options: dict[str, Any],
    engine: str,
    progress: bool | None,
    manager: PluginManager,
) -> dict[str, Any]:
    out_dir = claim.out_dir
    (out_dir / TOKENIZER_DIR).mkdir(exist_ok=True)
    tok_config = tok.save(out_dir / TOKENIZER_DIR)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    # Every asked-for split exists in the output, even if the hash leaves it empty.
    splits = SPLITS if config["val_fraction"] > 0 else SPLITS[:1]
    for directory in (*splits, TASKS_DIR):
        (out_dir / directory).mkdir(exist_ok=True)
    admitted = [(i, s) for i, (s, problem) in enumerate(zip(opened, problems)) if problem is None]
    tasks = plan_chunks(admitted, config["task_bytes"])
    done = claim.finished_tasks(len(tasks), splits)
    # Sources refused by the schema check (under --on-error skip) are recorded after the clean-up.
    policy = ErrorPolicy(config["on_error"], out_dir / TASKS_DIR / "schema-rejects.jsonl")
    for problem in problems:
        if problem is not None:
            policy.handle(problem)
    main_skipped = policy.close()
    settings = TaskSettings(
        out_dir=str(out_dir),
        config_fingerprint=config_fp,
        format=config["format"],
        fields=config["fields"],
        normalize=config["normalize"],
        train_on_prompt=config["train_on_prompt"],
        max_doc_tokens=config["max_doc_tokens"],
        on_error=config["on_error"],
        val_fraction=config["val_fraction"],
        seed=config["seed"],
        dedup=config["dedup"],
        splits=splits,
        shard_format=fmt.name,
        dtype=dtype.name,
        tokens_per_shard=config["tokens_per_shard"],
        tokenizer=tokenizer_type.name,
        tokenizer_config=tok_config,
        engine=engine,
    )
    pending = [task for task in tasks if task.index not in done]
    workers = max(1, min(len(pending), workers or available_cpus()))

    from tqdm.auto import tqdm

    bar = tqdm(desc="prepare", unit=" docs", disable=None if progress is None else not progress)
    with bar:
        if len(done):
            bar.set_postfix_str(f"{len(done)} of {len(tasks)} tasks done before")
        announced: set[str] = set()

        def announce(message: str) -> None:
            if message not in announced:  # once per source, not once per part of it
                announced.add(message)
                log.info(message)

        runner = TaskRunner(settings, manager, progress=bar.update, announce=announce)
        for summary in executor.factory(workers=workers, **executor_options).map(runner, pending):
            if not summary["progress_shown"]:  # it ran in another process
                bar.update(summary["documents"])
    merged = merge(settings, len(tasks), len(opened), fmt, main_skipped, announce)
    if merged.skipped:
        total = sum(merged.skipped.values())
        reasons = ", ".join(f"{k}: {v:,}" for k, v in merged.skipped.items())
        log.warning(
            f"{out_dir}: skipped {total:,} record(s) ({reasons}); see {reject_file(out_dir)}"
        )
    if config["dedup"]:
        log.info(f"{out_dir}: dropped {merged.duplicates:,} exact duplicate document(s)")
    if merged.truncated:
        log.info(
            f"{out_dir}: truncated {merged.truncated:,} document(s) to "
            f"{config['max_doc_tokens']:,} tokens"
        )
    if not sum(entry["num_documents"] for entry in merged.splits.values()):
        raise DataError(
            "the sources hold no usable records: "
            + ", ".join(entry["spec"] for entry in provenance)
        )
    for entry, count in zip(provenance, merged.records):
        entry["records"] = count
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gristmill_version": __version__,
        "shard_format": {"name": fmt.name, "version": fmt.format_version},
        "config_fingerprint": config_fp,
        "fingerprint": fingerprint([config_fp, merged.splits]),
        "generation": new_generation(),
        "dtype": dtype.name,
        "tokenizer": {
            "name": tokenizer_type.name,
            "spec": config["tokenizer"],
            "config": tok_config,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "add_bos": tok.add_bos,
            "add_eos": tok.add_eos,
            # How chat examples are rendered: the tokenizer's own template, or gristmill's.
            "chat_template": "built-in"
            if getattr(tok, "render_chat", None) is None
            else "tokenizer",
            "files": saved_files(out_dir),
        },
        "splits": merged.splits,
        "stats": {"metadata": merged.metadata},
        "provenance": {
            "sources": provenance,
            "config": config,
            "skipped": merged.skipped,
            "duplicates": merged.duplicates,
            "truncated": merged.truncated,
        },
    }
    manifest = write_manifest(out_dir, manifest)
    claim.finish()
    totals = ", ".join(
        f"{s}: {e['num_documents']:,} documents, {e['num_tokens']:,} tokens"
        for s, e in merged.splits.items()
    )
    log.info(f"{out_dir}: wrote {totals}")
    return manifest


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
