"""The Parquet source: same records as JSONL, clean splits by row group, projection, bad input.

Every file here is a real Parquet file written with pyarrow. The ``min`` tox environment has no
pyarrow: there every test skips except the one that checks the install hint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DataError, MissingDependencyError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Rejected, SourceType, Where
from gristmill.plugin.manager import get_manager
from tests.helpers import examples, read_all, wheres

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
needs_pyarrow = pytest.mark.skipif(
    not HAS_PYARROW, reason="pyarrow is not installed (pip install 'gristmill[parquet]')"
)
if HAS_PYARROW:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    max_size=40,
)


def write_parquet(
    path: Path, records: list[dict[str, Any]], groups: list[int], schema: Any = None
) -> Path:
    """Write ``records`` with exactly the row-group sizes in ``groups`` (which sum to their count)."""
    assert sum(groups) == len(records)
    table = pa.Table.from_pylist(records, schema=schema)
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for size in groups:
            writer.write_table(table.slice(start, size), row_group_size=size)
            start += size
    assert pq.ParquetFile(path).metadata.num_row_groups == len(groups)
    return path


def chunked(total: int, size: int) -> list[int]:
    """Row-group sizes of ``size`` rows (the last one shorter) covering ``total`` rows."""
    return [min(size, total - start) for start in range(0, total, size)]


def open_one(path: Path, **options: Any) -> Any:
    [source] = open_sources([str(path)], get_manager(), **options)
    return source


# --- same records, splitting ----------------------------------------------------------------------


@needs_pyarrow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, group_size=st.integers(1, 12), batch_size=st.none() | st.integers(1, 5))
def test_parquet_yields_the_same_records_as_jsonl(
    tmp_path_factory, records, group_size, batch_size
):
    root = tmp_path_factory.mktemp("same")
    jsonl = root / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    schema = pa.schema([("text", pa.string()), ("n", pa.int64()), ("tags", pa.list_(pa.string()))])
    parquet = write_parquet(root / "d.parquet", records, chunked(len(records), group_size), schema)
    source = open_one(parquet, batch_size=batch_size)
    assert read_all(source) == read_all(open_one(jsonl)) == records
    assert wheres(source) == [
        Where(str(parquet), i, unit="row") for i in range(1, len(records) + 1)
    ]


@needs_pyarrow
# Each example writes a Parquet file and reads it whole, split, split again and pickled.
@settings(max_examples=examples(0.6), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=st.lists(st.integers(1, 12), max_size=12), pieces=st.integers(1, 10))
def test_split_gives_disjoint_in_order_pieces_of_whole_row_groups(tmp_path_factory, groups, pieces):
    records = [{"text": f"row {i}"} for i in range(sum(groups))]
    path = write_parquet(tmp_path_factory.mktemp("split") / "d.pq", records, groups)
    source = open_one(path, batch_size=3)
    parts = source.split(pieces)
    assert len(parts) == max(1, min(pieces, len(groups)))  # as many as asked, when it can
    assert [r for part in parts for r in read_all(part)] == records  # disjoint, in order, whole
    # Each piece reports the file's own row numbers.
    assert [w for part in parts for w in wheres(part)] == wheres(source)
    if len(parts) > 1:
        # Whole row groups, contiguous, each in exactly one piece.
        assert [g for part in parts for g in part.row_groups] == list(range(len(groups)))
    # A piece splits again, and travels to another process intact.
    assert [r for sub in parts[0].split(3) for r in read_all(sub)] == read_all(parts[0])
    assert [read_all(pickle.loads(pickle.dumps(p))) for p in parts] == [read_all(p) for p in parts]


@needs_pyarrow
def test_split_balances_pieces_by_bytes(tmp_path):
    records = [{"text": "x" * 1000} for _ in range(100)]
    path = write_parquet(tmp_path / "d.parquet", records, [10] * 10)
    parts = open_one(path).split(5)
    assert [len(p.row_groups) for p in parts] == [2, 2, 2, 2, 2]
    assert [p.first_row for p in parts] == [1, 21, 41, 61, 81]


# --- projection, size limit, schema --------------------------------------------------------------


@needs_pyarrow
def test_projection_reads_only_the_named_columns(tmp_path):
    records = [{"text": f"t{i}", "blob": "z" * 5000, "n": i} for i in range(50)]
    path = write_parquet(tmp_path / "d.parquet", records, chunked(50, 8))
    source = open_one(path, columns=["n", "text"], max_record_bytes=1000)
    # The 5 kB column is never read: no row is over the 1 kB limit.
    assert read_all(source) == [{"n": r["n"], "text": r["text"]} for r in records]
    assert source.schema() == {"n": "int64", "text": "string"}
    assert open_one(path).schema() == {"text": "string", "blob": "string", "n": "int64"}
    assert source.fingerprint() != open_one(path).fingerprint()
    assert [r for p in source.split(3) for r in read_all(p)] == read_all(source)
    with pytest.raises(DataError, match=r"d.parquet: no column 'body' in this file; it has 'text'"):
        read_all(open_one(path, columns=["text", "body"]))


@needs_pyarrow
def test_rows_over_the_size_limit_are_rejected_with_their_row_and_column(tmp_path):
    notes = pa.list_(pa.struct([("author", pa.string()), ("body", pa.string())]))
    schema = pa.schema([("text", pa.string()), ("notes", notes), ("n", pa.int32())])
    records = [
        {"text": f"row {i}", "notes": [{"author": "me", "body": "hi"}], "n": i} for i in range(30)
    ]
    records[4]["text"] = "x" * 5000
    records[17]["notes"] = [{"author": "me", "body": "y" * 3000}] * 2
    path = write_parquet(tmp_path / "big.parquet", records, [10, 10, 10], schema)
    items = read_all(open_one(path, max_record_bytes=2000))
    rejected = {i + 1: item for i, item in enumerate(items) if isinstance(item, Rejected)}
    assert sorted(rejected) == [5, 18]
    assert rejected[5].reason == "too-large" and rejected[5].field == "text"
    assert rejected[18].field == "notes" and "about 6,0" in rejected[18].message
    assert rejected[5].where == Where(str(path), 5, unit="row")
    kept = [item for item in items if not isinstance(item, Rejected)]
    assert kept == [r for i, r in enumerate(records) if i not in (4, 17)]

    with pytest.raises(DataError, match=r"big.parquet: row 5: field 'text': the row holds about"):
        gristmill.prepare(path, tmp_path / "a", max_record_bytes=2000, progress=False)
    manifest = gristmill.prepare(
        path, tmp_path / "b", max_record_bytes=2000, on_error="skip", progress=False
    )
    assert manifest["provenance"]["skipped"] == {"too-large": 2}
    assert manifest["splits"]["train"]["num_documents"] == 28


@needs_pyarrow
def test_schema_drift_between_files_fails_or_skips_the_drifting_file(tmp_path):
    a = write_parquet(tmp_path / "a.parquet", [{"text": f"doc {i}"} for i in range(40)], [15, 25])
    b = write_parquet(tmp_path / "b.parquet", [{"text": i} for i in range(10)], [10])
    with pytest.raises(DataError) as info:
        gristmill.prepare([a, b], tmp_path / "fail", progress=False)
    message = str(info.value)
    assert str(a) in message and str(b) in message
    assert "column 'text' is string there, int64 here" in message

    manifest = gristmill.prepare([a, b], tmp_path / "skip", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {"schema-drift": 1}
    ds = gristmill.open_dataset(tmp_path / "skip")
    texts = [ds.tokenizer.decode(ds.documents.document(i)[0]) for i in range(len(ds))]
    assert texts == [f"doc {i}<|endoftext|>" for i in range(40)]
    [reject] = (tmp_path / "skip.rejects.jsonl").read_text().splitlines()
    assert json.loads(reject)["where"] == str(b)


@needs_pyarrow
def test_encodings_that_read_the_same_values_are_no_drift(tmp_path):
    # pandas writes string, polars large_string; dictionary encoding is a storage detail.
    a = write_parquet(tmp_path / "a.parquet", [{"text": "one"}], [1])
    large = pa.schema([("text", pa.large_string())])
    b = write_parquet(tmp_path / "b.parquet", [{"text": "two"}], [1], large)
    c = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": pa.array(["three"]).dictionary_encode()}), c)
    assert open_one(a).schema() == open_one(b).schema() == open_one(c).schema()
    manifest = gristmill.prepare([a, b, c], tmp_path / "out", progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 3


# --- damaged files -------------------------------------------------------------------------------


def damage_row_group(path: Path, group: int) -> None:
    """Overwrite the header of a row group's first data page with junk."""
    offset = pq.ParquetFile(path).metadata.row_group(group).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))


def flip_a_value_byte(path: Path, value: bytes) -> None:
    """Flip the low bit of the second byte of ``value`` where it is stored: the text stays
    valid UTF-8 and the page well formed, so only the page's checksum can tell."""
    data = bytearray(path.read_bytes())
    at = data.index(value) + 1
    data[at] ^= 1
    path.write_bytes(bytes(data))


def damaged_file(path: Path, records: list[dict[str, Any]], damage: str) -> Path:
    """``records`` in row groups of 100 rows, uncompressed, with page checksums; group 4
    damaged in its page header (``header``) or in the values of a page (``values``)."""
    pq.write_table(
        pa.Table.from_pylist(records),
        path,
        row_group_size=100,
        compression="none",
        use_dictionary=False,
        write_page_checksum=True,
        data_page_size=1024,  # several pages per row group: damage can come mid-group
    )
    if damage == "header":
        damage_row_group(path, 4)
    else:
        flip_a_value_byte(path, b"record 450")
    return path


@needs_pyarrow
@pytest.mark.parametrize("damage", ["header", "values"])
def test_a_damaged_row_group_costs_its_own_rows_only(tmp_path, damage):
    """A damaged row group once ended the file: 400 of 900 rows kept, counted as 1, though
    groups 5 to 8 read fine. Now its rows are counted from the footer and the reading goes on."""
    records = [{"text": f"record {i}"} for i in range(900)]
    path = damaged_file(tmp_path / "damaged.parquet", records, damage)
    items = read_all(open_one(path, batch_size=10))
    [rejected] = [item for item in items if isinstance(item, Rejected)]
    kept = [item for item in items if not isinstance(item, Rejected)]
    assert rejected.reason == "damaged-row-group" and rejected.where == Where(str(path))
    assert "row group 4 (rows 401 to 500)" in rejected.message
    # Rows the damaged group gave before the damage are kept, the others counted: 100 in all.
    assert len(kept) + rejected.rows == 900
    assert kept == records[: len(kept) - 400] + records[500:]
    assert f"{rejected.rows} rows" in rejected.message

    message = r"damaged.parquet: row group 4 \(rows 401 to 500\) cannot be read"
    with pytest.raises(DataError, match=message):
        gristmill.prepare(path, tmp_path / "a", progress=False)
    manifest = gristmill.prepare(path, tmp_path / "b", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {"damaged-row-group": rejected.rows}
    assert manifest["splits"]["train"]["num_documents"] == len(kept)
    [entry] = (tmp_path / "b.rejects.jsonl").read_text().splitlines()
    assert json.loads(entry)["rows"] == rejected.rows


@needs_pyarrow
def test_pieces_after_a_damaged_row_group_read_in_full(tmp_path):
    records = [{"text": f"record {i}"} for i in range(900)]
    path = damaged_file(tmp_path / "damaged.parquet", records, "header")
    parts = open_one(path).split(9)
    assert [p.first_row for p in parts] == list(range(1, 900, 100))
    assert read_all(parts[5]) == records[500:600]
    [rejected] = read_all(parts[4])
    assert rejected.rows == 100


@needs_pyarrow
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    data=st.data(),
    batch_size=st.none() | st.integers(1, 7),
    pieces=st.integers(1, 4),
)
def test_kept_rows_are_exactly_the_rows_of_the_undamaged_groups(
    tmp_path_factory, sizes, data, batch_size, pieces
):
    """Any row groups damaged, any batch size and split: every row is kept or counted, and the
    kept rows are the input rows of the groups that read, in order."""
    records = [{"text": f"row {i}"} for i in range(sum(sizes))]
    path = write_parquet(tmp_path_factory.mktemp("pq") / "d.parquet", records, sizes)
    damaged = data.draw(st.sets(st.integers(0, len(sizes) - 1), min_size=1))
    for group in damaged:
        damage_row_group(path, group)
    parts = open_one(path, batch_size=batch_size).split(pieces)
    items = [item for part in parts for item in read_all(part)]
    rejected = [item for item in items if isinstance(item, Rejected)]
    starts = np.cumsum([0, *sizes])
    assert sorted(r.message.split()[2] for r in rejected) == sorted(map(str, damaged))
    assert sum(r.rows for r in rejected) == sum(sizes[g] for g in damaged)
    good = [r for g, n in enumerate(sizes) if g not in damaged for r in records[starts[g] :][:n]]
    assert [item for item in items if not isinstance(item, Rejected)] == good


@needs_pyarrow
def test_a_file_that_is_not_parquet_fails_naming_it(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text('{"text": "I am JSON"}\n')
    source = open_one(path)
    assert source.split(4) == [source]
    for call in (lambda: read_all(source), source.schema):
        with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
            call()
    with pytest.raises(DataError, match=r"fake.parquet: not a readable Parquet file"):
        gristmill.prepare(path, tmp_path / "a", progress=False)


@needs_pyarrow
def test_a_file_that_is_not_parquet_is_skipped_under_skip(tmp_path):
    good = write_parquet(tmp_path / "a.parquet", [{"text": "kept"}], [1])
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"PAR1 truncated")
    manifest = gristmill.prepare([good, bad], tmp_path / "out", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {"unreadable-rest": 1}


# --- end to end, registration, missing extra -----------------------------------------------------


@needs_pyarrow
def test_prepare_a_prompt_completion_parquet_file(tmp_path):
    records = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "id": i} for i in range(25)]
    path = write_parquet(tmp_path / "pairs.pq", records, [7, 7, 7, 4])
    manifest = gristmill.prepare(path, tmp_path / "ds", progress=False)
    [provenance] = manifest["provenance"]["sources"]
    assert provenance["fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert provenance["records"] == 25
    ds = gristmill.open_dataset(tmp_path / "ds")
    for i in range(25):
        ids, mask = ds.documents.document(i)
        assert ds.tokenizer.decode(ids) == f"Q{i}?\nA{i}.<|endoftext|>"
        assert ds.tokenizer.decode(ids[mask.astype(bool)]) == f"A{i}.<|endoftext|>"


@needs_pyarrow
def test_a_null_field_names_the_row(tmp_path):
    records = [{"text": f"t{i}"} for i in range(10)]
    records[6]["text"] = None
    path = write_parquet(tmp_path / "d.parquet", records, [4, 6])
    with pytest.raises(DataError, match=r"d.parquet: row 7: field 'text'"):
        gristmill.prepare(path, tmp_path / "out", progress=False)


def test_the_source_is_registered_with_its_extra():
    source = get_manager().get(SourceType, "parquet")
    assert source.requires == "parquet"
    assert source.suffixes == (".parquet", ".pq")


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed in this environment")
def test_without_pyarrow_opening_a_parquet_file_names_the_extra(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(MissingDependencyError, match=HINT):
        open_one(path)


def test_a_blocked_pyarrow_import_names_the_extra(tmp_path, monkeypatch):
    # The same check where pyarrow is installed: None in sys.modules makes the import fail.
    for name in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(MissingDependencyError, match=rf"d.parquet: .*{HINT}"):
        open_one(path)
