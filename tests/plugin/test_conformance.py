"""Conformance over every registered component: the kit of gristmill.testing runs every check
of every source, field mapper, tokenizer, shard format, packer, sampler, exporter, executor and
preset registered here (first-party, contrib and any installed third-party plugin); a component
it cannot exercise here is reported as a skip, with the reason.

Sources also read the same records from the same data in every layout (JSONL, JSON, CSV/TSV,
Parquet, Arrow files and streams, a folder datasets saved, compressed, served over HTTP, a Hub
folder), and split into k pieces that are disjoint, in order, and together the whole."""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import io
import json
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Rejected, SourceType
from gristmill.plugin.manager import get_manager
from gristmill.testing import Unavailable, conformance
from gristmill.testing.data import TEXTS
from tests.helpers import examples, train_bpe

HAS = {m: importlib.util.find_spec(m) is not None for m in ("zstandard", "pyarrow", "datasets")}

# Sources that cannot serve arbitrary records, and why.
EXEMPT = {
    "sample": "serves the installed standard library, not given data (tests/ingest/test_sources.py)",
    "synthetic": "makes random token ids, not given data (tests/ingest/test_synthetic.py)",
    "text": "records hold text alone, no other field (tests/ingest/test_text_source.py)",
}


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _table(records: list[dict], delimiter: str) -> bytes:
    out = io.StringIO()
    # QUOTE_ALL: the csv writer leaves a bare "\r" unquoted otherwise, which no reader can tell
    # from a line end.
    writer = csv.DictWriter(out, ["text", "tag"], delimiter=delimiter, quoting=csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _parquet(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=3)


# layout name -> (source name it exercises, writer(path_without_suffix, records) -> spec, needs)
Writer = Callable[[Path, list[dict]], str]


def _file(suffix: str, encode: Callable[[list[dict]], bytes]) -> Writer:
    def write(base: Path, records: list[dict]) -> str:
        path = base.with_name(base.name + suffix)
        path.write_bytes(encode(records))
        return str(path)

    return write


def _parquet_file(base: Path, records: list[dict]) -> str:
    path = base.with_name(base.name + ".parquet")
    _parquet(path, records)
    return str(path)


def _arrow_file(suffix: str, *, stream: bool) -> Writer:
    def write(base: Path, records: list[dict]) -> str:
        import pyarrow as pa

        path = base.with_name(base.name + suffix)
        table = pa.Table.from_pylist(records)
        with (pa.ipc.new_stream if stream else pa.ipc.new_file)(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=3)
        return str(path)

    return write


def _saved_dataset(base: Path, records: list[dict]) -> str:
    """A folder that datasets' save_to_disk wrote, in two data files."""
    import datasets

    datasets.disable_progress_bars()
    folder = base.with_name(base.name + "-saved")
    datasets.Dataset.from_list(records).save_to_disk(str(folder), num_shards=2)
    return str(folder)


def _hub_folder(base: Path, records: list[dict]) -> str:
    folder = base.with_name(base.name + "-hub") / "data"
    folder.mkdir(parents=True)
    half = len(records) // 2
    (folder / "train-0.jsonl").write_bytes(_jsonl(records[:half]))
    (folder / "train-1.jsonl").write_bytes(_jsonl(records[half:]))
    return f"hub:{folder.parent}"


LAYOUTS: dict[str, tuple[str, Writer, str | None]] = {
    "jsonl": ("jsonl", _file(".jsonl", _jsonl), None),
    "jsonl.gz": ("jsonl", _file(".jsonl.gz", lambda r: gzip.compress(_jsonl(r))), None),
    "ndjson.zst": ("jsonl", _file(".ndjson.zst", lambda r: _zstd(_jsonl(r))), "zstandard"),
    "json array": ("json", _file(".json", lambda r: json.dumps(r, indent=1).encode()), None),
    "json stream.gz": (
        "json",
        _file(".json.gz", lambda r: gzip.compress("\n".join(json.dumps(x) for x in r).encode())),
        None,
    ),
    "csv": ("csv", _file(".csv", lambda r: _table(r, ",")), None),
    "csv.zst": ("csv", _file(".csv.zst", lambda r: _zstd(_table(r, ","))), "zstandard"),
    "tsv.gz": ("tsv", _file(".tsv.gz", lambda r: gzip.compress(_table(r, "\t"))), None),
    "parquet": ("parquet", _parquet_file, "pyarrow"),
    "arrow file": ("arrow", _arrow_file(".arrow", stream=False), "pyarrow"),
    "arrow stream": ("arrow", _arrow_file(".arrows", stream=True), "pyarrow"),
    "feather": ("arrow", _arrow_file(".feather", stream=False), "pyarrow"),
    "saved dataset": ("arrow", _saved_dataset, "datasets"),
    "hub folder": ("hub", _hub_folder, "datasets"),
    "http": ("hub", None, "datasets"),  # written by the served_dir fixture below  # type: ignore[dict-item]
}


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory):
    """A loopback HTTP server over a directory: the "served over HTTP" layout."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_registered_source_is_covered_or_exempt():
    covered = {source for source, _, _ in LAYOUTS.values()}
    registered = set(get_manager().components(SourceType))
    assert registered - covered - set(EXEMPT) == set(), "add a layout for the new source"


def read(spec: str) -> tuple[list[dict], list]:
    [source] = open_sources([spec], get_manager())
    return [item[0] for item in source.records() if not isinstance(item, Rejected)], source


TEXT = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r"), min_size=1, max_size=40
)


def _layout(name: str):
    needs = LAYOUTS[name][2]
    reason = f"the {name} layout needs {needs}, which is not installed here"
    return pytest.param(
        name, marks=pytest.mark.skipif(bool(needs) and not HAS[needs], reason=reason)
    )


# Each example writes and reads a file, a Parquet table or a served page: a quarter of the
# profile's examples per layout.
@settings(max_examples=examples(0.25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(st.fixed_dictionaries({"text": TEXT, "tag": TEXT}), min_size=2, max_size=25),
    pieces=st.integers(1, 6),
)
@pytest.mark.parametrize("layout", [_layout(name) for name in LAYOUTS])
def test_every_layout_gives_the_same_records_and_splits_cleanly(
    tmp_path_factory, served_dir, layout, records, pieces
):
    root = tmp_path_factory.mktemp("conformance")
    if layout == "http":
        directory, url = served_dir
        sub = root.name
        (directory / f"{sub}.jsonl").write_bytes(_jsonl(records))
        spec = f"hub:{url}/{sub}.jsonl"
    else:
        spec = LAYOUTS[layout][1](root / "data", records)
    got, source = read(spec)
    assert got == records
    parts = source.split(pieces)
    assert 1 <= len(parts) <= pieces
    joined = [item[0] for part in parts for item in part.records()]
    assert joined == records
    if not spec.startswith("hub:"):  # files: every piece reports the file's own lines/rows
        wheres = [item[1] for part in parts for item in part.records()]
        assert wheres == [item[1] for item in source.records()]


def _hub(folder: Path, records: list[dict]) -> str:
    return _hub_folder(folder / "data", records)


def _tokenizer_json(folder: Path) -> str:
    tok = train_bpe(TEXTS * 4, vocab_size=400, specials=["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    return str(folder / "tokenizer.json")


def _hf_folder(folder: Path) -> str:
    tok = train_bpe(TEXTS * 4, vocab_size=400, specials=["<|endoftext|>"])
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return f"hf:{folder}"


test_every_registered_component_conforms = conformance(
    sources={
        "hub": _hub,
        "sample": "sample:stdlib",
        "synthetic": "synthetic:documents=40,length=3..30,vocab_size=500",
    },
    tokenizers={
        "hf": _hf_folder,
        "tokenizer-json": _tokenizer_json,
        "ids": Unavailable("encodes no text (tests/ingest/test_pretokenized.py)"),
    },
)
