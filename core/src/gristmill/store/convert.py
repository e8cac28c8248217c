"""``convert``: any readable source to one plain JSONL or Parquet file of canonical records."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gristmill.errors import DataError, DatasetError, MissingDependencyError
from gristmill.ingest.chain import canonical_examples, check_schemas
from gristmill.ingest.mapping import check_fields
from gristmill.ingest.policy import ErrorPolicy, describe_passed
from gristmill.ingest.sources import open_sources, with_preset_defaults
from gristmill.layout import reject_file
from gristmill.options import ConvertOptions, takes
from gristmill.plugin.atomic import remove_stale_temporaries, temporary_for
from gristmill.plugin.components import FieldMapperType, Where
from gristmill.plugin.examples import Example
from gristmill.plugin.manager import PluginManager, get_manager

log = logging.getLogger("gristmill")

PARQUET_ROWS = 10_000  # rows per Parquet row group: bounded memory, decent compression


@takes(ConvertOptions)
def convert(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: ConvertOptions,
    *,
    manager: PluginManager | None = None,
) -> dict[str, Any]:
    """Write the canonical records of ``sources`` to ``out`` (``.jsonl`` or ``.parquet``).

    Records are mapped exactly as ``prepare`` maps them (``{"text"}``, ``{"prompt",
    "completion"[, "system"]}``, ``{"messages": [{"role", "content"}…]}`` or ``{"input_ids"[,
    "loss_mask"]}``), with the same error policy; the file appears only when complete. Returns
    ``{"records": N, "skipped": {...}}``, and ``"passed_over"`` (units left out on purpose, per
    reason) when there are any. ``source_options`` go to every source, as
    :func:`~gristmill.prepare`'s do.
    """
    manager = manager or get_manager()
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    out_path = Path(out)
    write = _writer(out_path, options.overwrite)
    options = with_preset_defaults(options, specs, manager)
    if options.format != "auto":
        check_fields(manager.get(FieldMapperType, options.format), options.fields)
    opened = open_sources(
        specs,
        manager,
        options.source_options,
        output=out_path,
        max_record_bytes=options.max_record_bytes,
        column_names=options.column_names,
    )
    rejects = reject_file(out_path)
    policy = ErrorPolicy(options.on_error, rejects)
    refused = check_schemas(opened, options.on_error)

    def examples() -> Iterator[tuple[Example, Where]]:
        for position, source in enumerate(opened):
            refusal = refused.get(position)
            yield from canonical_examples(source, options, manager, policy, log.info, refusal)

    for written in (out_path, rejects):  # what a killed convert left half-written
        remove_stale_temporaries(written.parent, written.name)
    with temporary_for(out_path) as tmp:
        try:
            count = write(tmp, examples())
        except BaseException:
            policy.abort()
            raise
        skipped = policy.close()  # the reject file first: the output, last, means both are there
        os.replace(tmp, out_path)
    if skipped:
        log.warning(f"{out_path}: {policy.summary()}")
    passed = policy.passed_over()
    if passed:
        log.info(f"{out_path}: {describe_passed(passed)}")
    log.info(f"{out_path}: wrote {count:,} records")
    return {"records": count, "skipped": skipped, **({"passed_over": passed} if passed else {})}


def _writer(
    out_path: Path, overwrite: bool
) -> Callable[[Path, Iterator[tuple[Example, Where]]], int]:
    """What writes ``out_path``'s format, once the path may be written."""
    suffix = out_path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise DataError(f"{out_path}: the output must end in .jsonl or .parquet")
    if out_path.is_dir():  # --overwrite replaces a file convert wrote, never a directory
        raise DatasetError(f"{out_path} is a directory; choose another -o")
    if out_path.exists() and not overwrite:
        raise DatasetError(f"{out_path} exists; pass --overwrite to replace it")
    return _write_parquet if suffix == ".parquet" else _write_jsonl


def _write_jsonl(path: Path, examples: Iterator[tuple[Example, Where]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for example, _ in examples:
            f.write(json.dumps(example.as_record(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_parquet(path: Path, examples: Iterator[tuple[Example, Where]]) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            "writing Parquet needs pyarrow: pip install 'gristmill[parquet]'"
        ) from None
    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema(
        [(name, pa.string()) for name in ("text", "prompt", "completion", "system")]
        + [("messages", pa.list_(turn)), ("metadata", pa.string())]  # metadata as JSON text
    )
    # Token ids have columns of their own; the first example decides which the file holds.
    first = next(examples, None)
    ids = first is not None and first[0].input_ids is not None
    if ids:
        tokens = [("input_ids", pa.list_(pa.int64())), ("loss_mask", pa.list_(pa.uint8()))]
        schema = pa.schema([*tokens, ("metadata", pa.string())])
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        rows: list[dict[str, Any]] = []
        for example, where in itertools.chain([first] if first else [], examples):
            if (example.input_ids is not None) != ids:
                raise DataError(
                    "records of token ids and records of text cannot share one Parquet file, "
                    "whose columns the first record chose: convert them to separate files, or "
                    "to .jsonl",
                    where=str(where),
                )
            row = example.as_record()
            if "metadata" in row:
                row["metadata"] = json.dumps(row["metadata"], ensure_ascii=False)
            rows.append(row)
            if len(rows) == PARQUET_ROWS:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count, rows = count + len(rows), []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            count += len(rows)
    return count
