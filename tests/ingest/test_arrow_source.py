"""The Arrow source: IPC files in both formats, Feather, and folders that datasets saved, read as
datasets reads them, split by record batch, in bounded memory, with damage named.

Every file here is written by real pyarrow, and every saved folder by real ``datasets``
(``save_to_disk`` to a temporary folder, no network). The ``min`` tox environment has neither:
there every test skips except the ones that check the install hint and the registration.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill import hookimpl
from gristmill.errors import DataError, MissingDependencyError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Rejected, SourceType, Where
from gristmill.plugin.manager import PluginManager, get_manager
from tests.helpers import read_all, run_gristmill, tree_bytes, wheres

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAS_DATASETS = importlib.util.find_spec("datasets") is not None
needs_pyarrow = pytest.mark.skipif(
    not HAS_PYARROW, reason="pyarrow is not installed (pip install 'gristmill[parquet]')"
)
needs_datasets = pytest.mark.skipif(
    not HAS_DATASETS, reason="datasets is not installed (pip install 'gristmill[hub]')"
)
if HAS_PYARROW:
    import pyarrow as pa
    import pyarrow.feather as feather
if HAS_DATASETS:
    import datasets

    datasets.disable_progress_bars()

HINT = r"pip install 'gristmill\[parquet\]'"
TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1)
RECORDS = st.lists(
    st.fixed_dictionaries(
        {
            "text": TEXT,
            "n": st.none() | st.integers(-(2**63), 2**63 - 1),
            "tags": st.lists(st.text(max_size=3), max_size=3),
        }
    ),
    min_size=1,
    max_size=40,
)
# A chat record as SFT data holds it: a list of messages, each a struct.
CHATS = [
    {
        "id": i,
        "score": i / 4,
        "messages": [
            {"role": "user", "content": f"question {i}?"},
            {"role": "assistant", "content": f"answer {i} ünïcödé"},
        ],
        "meta": {"lang": "en", "tags": ["a", "b"][: i % 3]},
        "note": None if i % 5 else f"note {i}",
    }
    for i in range(60)
]


def write_ipc(
    path: Path, records: list[dict[str, Any]], batch: int, *, stream: bool, **options: Any
) -> Path:
    """``records`` as an Arrow IPC file (``stream``: the stream format) of ``batch``-row batches."""
    table = pa.Table.from_pylist(records)
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with new(path, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table, max_chunksize=batch)
    return path


def save(folder: Path, records: list[dict[str, Any]], shards: int = 3) -> Path:
    datasets.Dataset.from_list(records).save_to_disk(str(folder), num_shards=shards)
    return folder


def open_one(spec: Path | str, max_record_bytes: int = 64 << 20, **options: Any) -> Any:
    [source] = open_sources([str(spec)], get_manager(), options, max_record_bytes=max_record_bytes)
    return source


# --- the same records in every layout, splitting --------------------------------------------------


@needs_pyarrow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=RECORDS,
    batch=st.integers(1, 12),
    stream=st.booleans(),
    pieces=st.integers(1, 6),
)
def test_both_ipc_formats_give_the_records_written_and_split_cleanly(
    tmp_path_factory, records, batch, stream, pieces
):
    path = write_ipc(tmp_path_factory.mktemp("ipc") / "d.arrow", records, batch, stream=stream)
    source = open_one(path)
    assert read_all(source) == records
    assert wheres(source) == [Where(str(path), i + 1, unit="row") for i in range(len(records))]
    parts = source.split(pieces)
    assert 1 <= len(parts) <= min(pieces, -(-len(records) // batch))
    # Pieces are whole batches, in order, each placing its rows as the whole file does.
    assert [item for part in parts for item in part.records()] == list(source.records())
    assert [read_all(pickle.loads(pickle.dumps(p))) for p in parts] == [read_all(p) for p in parts]


@needs_pyarrow
def test_stream_file_and_feather_read_alike_and_compare_as_one_schema(tmp_path):
    file = write_ipc(tmp_path / "f.arrow", CHATS, 7, stream=False)
    stream = write_ipc(tmp_path / "s.arrows", CHATS, 7, stream=True)
    feather.write_feather(pa.Table.from_pylist(CHATS), tmp_path / "d.feather", chunksize=9)
    sources = [open_one(p) for p in (file, stream, tmp_path / "d.feather")]
    assert [read_all(s) for s in sources] == [CHATS] * 3
    assert sources[0].schema() == sources[1].schema() == sources[2].schema()
    assert sources[0].schema()["messages"] == ("list<item: struct<role: string, content: string>>")


@needs_pyarrow
@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_buffers_inside_the_file_are_read(tmp_path, codec):
    if not pa.Codec.is_available(codec):
        pytest.skip(f"this pyarrow was built without {codec}")
    for stream in (False, True):
        path = write_ipc(tmp_path / f"{stream}.arrow", CHATS, 8, stream=stream, compression=codec)
        source = open_one(path)
        assert read_all(source) == CHATS
        assert [r for part in source.split(3) for r in read_all(part)] == CHATS


@needs_pyarrow
def test_large_and_dictionary_encoded_strings_are_no_schema_drift(tmp_path):
    plain = write_ipc(tmp_path / "a.arrow", [{"text": "x"}], 1, stream=False)
    table = pa.table({"text": pa.array(["y"], pa.large_string())})
    with pa.ipc.new_stream(tmp_path / "b.arrow", table.schema) as writer:
        writer.write_table(table)
    table = pa.table({"text": pa.array(["z"]).dictionary_encode()})
    with pa.ipc.new_file(tmp_path / "c.arrow", table.schema) as writer:
        writer.write_table(table)
    schemas = [open_one(p).schema() for p in (plain, tmp_path / "b.arrow", tmp_path / "c.arrow")]
    assert schemas == [{"text": "string"}] * 3
    manifest = gristmill.prepare(tmp_path, tmp_path / "out", progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 3


@needs_pyarrow
def test_projection_reads_only_the_named_columns_in_their_order(tmp_path):
    path = write_ipc(tmp_path / "d.arrow", CHATS, 10, stream=True, compression=None)
    source = open_one(path, columns=["note", "id"])
    assert read_all(source) == [{"note": r["note"], "id": r["id"]} for r in CHATS]
    assert list(source.schema()) == ["note", "id"]
    assert source.fingerprint() != open_one(path).fingerprint()
    with pytest.raises(DataError, match=r"d.arrow: no column 'nope' in this file; it has 'id'"):
        open_one(path, columns=["nope"]).schema()


@needs_pyarrow
def test_rows_over_the_size_limit_are_rejected_with_their_row_and_column(tmp_path):
    records = [{"text": "x" * (5000 if i in (3, 11) else 10), "id": i} for i in range(20)]
    path = write_ipc(tmp_path / "d.arrow", records, 8, stream=False)
    items = read_all(open_one(path, max_record_bytes=1000))
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert [(r.reason, r.where.line, r.field) for r in rejected] == [
        ("too-large", 4, "text"),
        ("too-large", 12, "text"),
    ]
    assert [i for i in items if not isinstance(i, Rejected)] == [
        r for r in records if r["id"] not in (3, 11)
    ]


# --- folders that datasets saved ------------------------------------------------------------------


@needs_datasets
def test_a_saved_dataset_reads_as_datasets_reads_it(tmp_path):
    folder = save(tmp_path / "saved", CHATS, shards=4)
    source = open_one(folder)
    expected = list(datasets.load_from_disk(str(folder)))
    assert read_all(source) == expected
    # Row N is dataset[N - 1], across the data files.
    assert wheres(source) == [Where(str(folder), i + 1, unit="row") for i in range(len(CHATS))]
    for pieces in (2, 3, 5):
        parts = source.split(pieces)
        assert len(parts) == min(pieces, 4)
        assert [item for p in parts for item in p.records()] == list(source.records())
    assert source.nbytes() == sum(p.stat().st_size for p in folder.glob("data-*.arrow"))


@needs_datasets
def test_a_saved_dataset_with_a_column_format_shows_those_columns_as_datasets_does(tmp_path):
    dataset = datasets.Dataset.from_list(CHATS)
    dataset.set_format(columns=["messages", "id"])
    dataset.save_to_disk(str(tmp_path / "saved"), num_shards=3)
    expected = list(datasets.load_from_disk(str(tmp_path / "saved")))
    source = open_one(tmp_path / "saved")
    assert read_all(source) == expected
    assert list(expected[0]) == ["id", "messages"]  # in the file's order
    parts = source.split(3)
    assert len(parts) == 3 and [r for part in parts for r in read_all(part)] == expected
    assert read_all(open_one(tmp_path / "saved", columns=["note"])) == [
        {"note": r["note"]} for r in CHATS
    ]


@needs_datasets
def test_a_saved_dataset_dict_reads_train_unless_told(tmp_path, caplog):
    train, test = CHATS[:40], CHATS[40:]
    pair = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    )
    pair.save_to_disk(str(tmp_path / "dd"))
    with caplog.at_level(logging.INFO, logger="gristmill"):
        source = open_one(tmp_path / "dd")
    assert read_all(source) == train
    assert source.splits == ("train", "test")
    assert "reading its split 'train' (it also has 'test'" in caplog.text
    assert read_all(open_one(tmp_path / "dd", split="test")) == test
    assert read_all(open_one(tmp_path / "dd" / "test")) == test
    assert open_one(tmp_path / "dd", split="test").fingerprint() != source.fingerprint()
    with pytest.raises(
        DataError, match=r"dd: a DatasetDict with the splits 'train', 'test' and none named 'val'"
    ):
        open_one(tmp_path / "dd", split="val")
    with pytest.raises(DataError, match=r"test: split='train' names a split of a DatasetDict"):
        open_one(tmp_path / "dd" / "test", split="train")


@needs_datasets
def test_a_dataset_dict_without_train_says_how_to_choose(tmp_path):
    only = datasets.DatasetDict({"validation": datasets.Dataset.from_list(CHATS)})
    only.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"none named 'train': name its folder \(.*dd/validation\)"):
        open_one(tmp_path / "dd")


@needs_datasets
def test_a_saved_folder_is_one_source_inside_a_directory_too(tmp_path):
    save(tmp_path / "tree" / "saved", CHATS[:10], shards=2)
    (tmp_path / "tree" / "more.jsonl").write_text('{"text": "from jsonl"}\n')
    sources = open_sources([str(tmp_path / "tree")], get_manager())
    assert [s.spec for s in sources] == [
        str(tmp_path / "tree" / "more.jsonl"),
        str(tmp_path / "tree" / "saved"),
    ]
    assert read_all(sources[1]) == CHATS[:10]


class _StateFolders:
    """A second plugin that claims the folders holding a state.json."""

    @hookimpl
    def gristmill_sources(self) -> list[SourceType]:
        return [
            SourceType(
                name="state-folders",
                description="folders holding a state.json",
                markers=("state.json",),
                factory=lambda spec, **context: None,
            )
        ]


def test_two_sources_claiming_one_folder_is_an_error_naming_both(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    manager = PluginManager()
    manager.register(_StateFolders(), "state-folders")
    with pytest.raises(DataError, match=r"is claimed by the sources 'arrow' and 'state-folders'"):
        open_sources([str(tmp_path / "saved")], manager)


@needs_datasets
def test_prepare_a_saved_chat_dataset_end_to_end(tmp_path):
    folder = save(tmp_path / "saved", CHATS)
    manifest = gristmill.prepare(folder, tmp_path / "ds", progress=False)
    [provenance] = manifest["provenance"]["sources"]
    assert provenance["records"] == len(CHATS)
    ds = gristmill.open_dataset(tmp_path / "ds")
    ids, mask = ds.documents.document(7)
    assert "answer 7 ünïcödé" in ds.tokenizer.decode(ids[mask.astype(bool)])
    again = gristmill.prepare(folder, tmp_path / "ds", progress=False)
    assert again["generation"] == manifest["generation"], "an unchanged folder is up to date"


def test_a_folder_with_only_dataset_info_says_what_it_is_not(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (folder / "ds-train.arrow").write_bytes(b"")
    with pytest.raises(
        DataError,
        match=r"cache: holds dataset_info.json but neither state.json .* nor dataset_dict.json "
        r".* It holds ds-train.arrow\. To read Arrow files in it .* name them",
    ):
        gristmill.prepare(folder, tmp_path / "out", progress=False)
    result = run_gristmill("prepare", str(folder), "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "cannot tell the format" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "holds dataset_info.json but neither state.json" in result.stderr


@needs_datasets
def test_a_saved_folder_missing_a_data_file_is_named_incomplete(tmp_path):
    folder = save(tmp_path / "saved", CHATS, shards=2)
    (folder / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(
        DataError,
        match=r"saved: state.json lists data-00001-of-00002.arrow, which the folder does not hold",
    ):
        open_one(folder)


# --- parallel prepare -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param("stream", marks=needs_pyarrow),
        pytest.param("saved folder", marks=needs_datasets),
    ],
)
def test_prepare_with_one_or_two_workers_is_byte_identical(tmp_path, layout):
    records = [{"text": f"document {i}: " + "words " * (i % 50)} for i in range(3000)]
    if layout == "stream":
        path = write_ipc(tmp_path / "d.arrow", records, 100, stream=True)
    else:  # tasks over runs of its data files
        path = save(tmp_path / "saved", records, shards=5)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        gristmill.prepare(
            path, out, workers=workers, task_bytes=60_000, tokens_per_shard=20_000, progress=False
        )
        outputs.append(tree_bytes(out))
    assert len([name for name in outputs[0] if name.startswith("train/")]) > 4  # several tasks
    assert outputs[0] == outputs[1]


# --- damage ---------------------------------------------------------------------------------------


@needs_pyarrow
def test_a_truncated_stream_keeps_the_rows_before_the_cut_and_names_the_file(tmp_path):
    records = [{"text": f"row {i} " + "x" * 200} for i in range(500)]
    whole = write_ipc(tmp_path / "whole.arrow", records, 50, stream=True).read_bytes()
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    source = open_one(cut)
    got = []
    with pytest.raises(
        DataError, match=r"cut.arrow: a record batch cannot be read .* damaged, truncated"
    ) as error:
        for record, _ in source.records():
            got.append(record)
    assert got == records[: len(got)] and len(got) % 50 == 0 and got
    assert f"rows up to {len(got):,} were read" in str(error.value)
    manifest = gristmill.prepare(cut, tmp_path / "out", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {"unreadable-rest": 1}
    assert manifest["provenance"]["sources"][0]["records"] == len(got)


@needs_pyarrow
@pytest.mark.parametrize("damage", ["truncated file format", "not arrow", "empty", "feather v1"])
def test_an_unreadable_file_is_an_error_naming_it_and_exit_2(tmp_path, damage):
    path = tmp_path / "bad.arrow"
    good = write_ipc(tmp_path / "good.arrow", CHATS, 10, stream=False).read_bytes()
    if damage == "truncated file format":
        path.write_bytes(good[: len(good) - 40])
    elif damage == "not arrow":
        path.write_text('{"text": "I am JSON"}\n')
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path = tmp_path / "bad.feather"
        with warnings.catch_warnings():  # pyarrow deprecates writing version 1, as we expect
            warnings.simplefilter("ignore", DeprecationWarning)
            feather.write_feather(pa.table({"text": ["a"]}), path, version=1)
    with pytest.raises(DataError, match=rf"{path.name}: "):
        read_all(open_one(path))
    result = run_gristmill("prepare", str(path), "-o", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert f"gristmill: error: {path}: " in result.stderr
    assert "Traceback" not in result.stderr
    if damage == "feather v1":
        assert "Feather version 1" in result.stderr


def test_a_compressed_arrow_file_is_refused_saying_why(tmp_path):
    path = tmp_path / "d.arrow.gz"
    path.write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match=r"d.arrow.gz: Arrow files are read in place"):
        open_one(path)


# --- bounded memory -------------------------------------------------------------------------------

# VmHWM, the peak resident memory of this process image: unlike ru_maxrss, it does not carry
# over the peak of the process that started it.
PEAK_RSS = """
import sys
from gristmill.ingest.sources import open_sources
from gristmill.plugin.manager import PluginManager, get_manager


def peak():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0])  # KiB


[source] = open_sources([sys.argv[1]], get_manager())
source.schema()  # pyarrow loaded and the file opened: part of the baseline
before = peak()
chars = sum(len(record["text"]) for record, _ in source.records())
print(chars, before, peak())
"""


def _growth(path: Path) -> tuple[int, int]:
    """Characters read and peak resident memory growth (bytes) of a fresh process reading it."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, check=True
    )
    chars, before, after = map(int, done.stdout.split())
    return chars, (after - before) << 10


@needs_pyarrow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status (Linux)")
@pytest.mark.parametrize("batch_rows", [2_000, 200_000], ids=["many batches", "one batch"])
def test_reading_costs_far_less_memory_than_the_file(tmp_path, batch_rows):
    """125 MiB of text, in 1.2 MiB batches or in one batch: the file is mapped and its pages are
    released after each slice of rows, so the reader holds about one slice, whatever the file."""
    text = pa.array(["abcdefghijklmnopqrstuvwxyz0123456789" * 18 + "...."] * 200_000)
    table = pa.table({"text": text})
    path = tmp_path / "big.arrow"
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    del text, table
    size = path.stat().st_size
    assert size > 120 << 20
    chars, growth = _growth(path)
    assert chars == 200_000 * 652
    assert growth < size // 4, f"{growth >> 20} MiB for a {size >> 20} MiB file"


# --- registration, missing extra ------------------------------------------------------------------


def test_the_source_is_registered_with_its_extra_suffixes_and_markers():
    source = get_manager().get(SourceType, "arrow")
    assert source.requires == "parquet"
    assert source.suffixes == (".arrow", ".arrows", ".feather", ".ipc")
    assert source.markers == ("state.json", "dataset_dict.json", "dataset_info.json")


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed in this environment")
def test_without_pyarrow_opening_an_arrow_file_names_the_extra(tmp_path):
    path = tmp_path / "d.arrow"
    path.write_bytes(b"ARROW1")
    with pytest.raises(MissingDependencyError, match=HINT):
        open_one(path)


def test_a_blocked_pyarrow_import_names_the_extra(tmp_path, monkeypatch):
    # The same check where pyarrow is installed: None in sys.modules makes the import fail.
    for name in ("pyarrow", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, name, None)
    path = tmp_path / "d.feather"
    path.write_bytes(b"ARROW1")
    with pytest.raises(MissingDependencyError, match=rf"d.feather: .*{HINT}"):
        open_one(path)


@needs_pyarrow
def test_the_fingerprint_is_the_files_hash(tmp_path):
    path = write_ipc(tmp_path / "d.arrow", CHATS, 10, stream=False)
    assert open_one(path).fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()
