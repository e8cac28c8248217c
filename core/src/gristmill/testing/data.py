"""The kit's inputs: texts, records in the usual file formats, and a small prepared dataset."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gristmill.plugin.manager import PluginManager

# Texts a tokenizer must take: empty, spaces, accents composed and not, scripts, emoji, code,
# something that looks like a special token, and one long text.
TEXTS = [
    "",
    " ",
    "a",
    "hello world",
    "  leading and trailing  ",
    "tabs\t\tand\n\nnewlines\r\n",
    "Héllo Wörld: déjà vu, naïve café",
    "e\u0301 a\u0308 ﬁ ①",
    "日本語のテキストと中文和한국어",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦",
    "<|endoftext|> looks special",
    "def f(x):\n    return x  # comment\n",
    "grist " * 400,
]

# One line each (a source of lines holds no line break), with what trips parsers: separators,
# quotes, escapes, markup, spaces at either end.
_LINES = [
    "plain words",
    "with, a comma",
    'with "double" quotes',
    "with 'single' quotes",
    "a tab\tinside",
    "back\\slash",
    "{not json}",
    "ünïcödé 数据 🙂",
    "  leading spaces",
    "trailing spaces  ",
    "x" * 300,
]
RECORDS = [{"text": f"{i}: {_LINES[i % len(_LINES)]}"} for i in range(40)]
# The same but one: a source's fingerprint must tell them apart.
CHANGED = [*RECORDS[:-1], {"text": RECORDS[-1]["text"] + "!"}]

Writer = Callable[[Path, list[dict[str, Any]]], str]


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _table(records: list[dict[str, Any]], delimiter: str) -> bytes:
    out = io.StringIO()
    # Every field quoted: a bare "\r" or delimiter would otherwise be ambiguous.
    writer = csv.DictWriter(out, list(records[0]), delimiter=delimiter, quoting=csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


def _parquet(path: Path, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)


def _arrow(path: Path, records: list[dict[str, Any]], *, stream: bool) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist(records)
    with (pa.ipc.new_stream if stream else pa.ipc.new_file)(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=7)


def _lines(records: list[dict[str, Any]]) -> bytes:
    return "".join(r["text"] + "\n" for r in records).encode()


ENCODERS: dict[str, Callable[[list[dict[str, Any]]], bytes]] = {
    ".jsonl": _jsonl,
    ".ndjson": _jsonl,
    ".json": lambda records: json.dumps(records, ensure_ascii=False, indent=1).encode(),
    ".csv": lambda records: _table(records, ","),
    ".tsv": lambda records: _table(records, "\t"),
    ".tab": lambda records: _table(records, "\t"),
    ".txt": _lines,
}


PARQUET = (".parquet", ".pq")
# Arrow IPC: suffix -> whether the kit writes the stream format (.arrows, as the media type
# names it) rather than the file format.
ARROW = {".arrow": False, ".feather": False, ".ipc": False, ".arrows": True}


def default_writer(suffixes: tuple[str, ...]) -> Writer | None:
    """A writer for the first of these file suffixes the kit knows, or ``None``."""
    for suffix in (s.lower() for s in suffixes):
        if suffix in ENCODERS or suffix in PARQUET or suffix in ARROW:
            return functools.partial(_write, suffix)
    return None


def _write(suffix: str, folder: Path, records: list[dict[str, Any]]) -> str:
    path = folder / f"data{suffix}"
    if suffix in PARQUET:
        _parquet(path, records)
    elif suffix in ARROW:
        _arrow(path, records, stream=ARROW[suffix])
    else:
        path.write_bytes(ENCODERS[suffix](records))
    return str(path)


def dataset(folder: Path, manager: PluginManager, *, masks: bool) -> Path:
    """A small dataset of the first-party plugins, two splits of several shards each: text
    documents, and with ``masks`` prompt/completion ones too (shards with loss masks)."""
    import gristmill

    (folder / "text.jsonl").write_bytes(_jsonl(RECORDS))
    sources = [folder / "text.jsonl"]
    if masks:
        pairs = [{"prompt": f"question {i}?", "completion": f" answer {i}"} for i in range(30)]
        (folder / "qa.jsonl").write_bytes(_jsonl(pairs))
        sources.append(folder / "qa.jsonl")
    out = folder / "ds"
    gristmill.prepare(
        sources,
        out,
        tokenizer="byte",
        val_fraction=0.25,
        tokens_per_shard=400,
        progress=False,
        manager=manager,
    )
    return out
