"""Records in memory as sources of prepare and stream: lists of dicts, pyarrow Tables, datasets'
Dataset and IterableDataset, and one-shot iterators; cut into tasks like files, the same output
for any worker count, fingerprinted by content where the object allows."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest

import gristmill
from gristmill.errors import DataError, DatasetError, GristmillError, OptionError
from gristmill.ingest.records import source_inputs
from tests.helpers import tree_bytes

RECORDS = [{"text": f"record {i} " + "words " * (i % 17)} for i in range(400)]
SMALL_TASKS = 2000  # input bytes per task: several tasks for RECORDS


def _texts(directory: Path) -> list[str]:
    dataset = gristmill.open_dataset(directory)
    docs = dataset.documents
    return [dataset.tokenizer.decode(docs.document(i)[0]) for i in range(docs.num_documents)]


def _shards(directory: Path) -> dict[str, bytes]:
    """The dataset's files but its manifest (whose fingerprints name the input)."""
    return {k: v for k, v in tree_bytes(directory).items() if k != "manifest.json"}


KINDS = ["list", "tuple", "table", "dataset", "iterable-dataset"]


def _make(kind: str, records: list[dict] = RECORDS) -> object:
    """``records`` as the kind of object a user passes."""
    if kind in ("list", "tuple"):
        return list(records) if kind == "list" else tuple(records)
    if kind == "table":
        pa = pytest.importorskip("pyarrow", reason="pyarrow Tables need pyarrow")
        return pa.Table.from_pylist(records)
    datasets = pytest.importorskip("datasets", reason="Datasets need the datasets package")
    dataset = datasets.Dataset.from_list(records)
    return dataset if kind == "dataset" else dataset.to_iterable_dataset(num_shards=4)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_prepares_the_records_of_a_file_alike(kind, write_jsonl, tmp_path):
    records = _make(kind)
    gristmill.prepare(write_jsonl(RECORDS), tmp_path / "file", progress=False, workers=1)
    gristmill.prepare(records, tmp_path / "memory", progress=False, workers=1)
    assert _texts(tmp_path / "memory") == _texts(tmp_path / "file")


@pytest.mark.parametrize("kind", ["list", "table", "dataset", "iterable-dataset"])
def test_one_or_two_workers_write_the_same_bytes(kind, tmp_path):
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        gristmill.prepare(
            _make(kind),
            out,
            workers=workers,
            task_bytes=SMALL_TASKS,
            val_fraction=0.2,
            progress=False,
        )
        outputs.append(_shards(out))
    tasks = {name.split("/")[-1][:5] for name in outputs[0] if name.startswith("train/")}
    assert len(tasks) > 1  # the records were cut into several tasks
    assert outputs[0] == outputs[1]


def test_a_task_carries_its_own_rows_only():
    pa = pytest.importorskip("pyarrow", reason="pyarrow Tables need pyarrow")
    datasets = pytest.importorskip("datasets", reason="Datasets need the datasets package")
    many = [{"text": f"{i} " + "x" * 200} for i in range(5000)]
    for records in (many, pa.Table.from_pylist(many), datasets.Dataset.from_list(many)):
        [source] = source_inputs(records)
        parts = source.split(50)
        assert len(pickle.dumps(parts[3])) < len(pickle.dumps(source)) / 20
        travelled = pickle.loads(pickle.dumps(parts[3]))
        got = list(travelled.records())
        assert [r for r, _ in got] == many[300:400]
        assert str(got[0][1]).endswith("[300]")


@pytest.mark.parametrize("kind", ["list", "table", "dataset"])
def test_the_same_records_are_found_up_to_date_and_others_are_not(kind, tmp_path, caplog):
    out = tmp_path / "out"
    first = gristmill.prepare(_make(kind), out, progress=False, workers=1)
    with caplog.at_level(logging.INFO, logger="gristmill"):
        again = gristmill.prepare(_make(kind), out, progress=False, workers=1)
    assert "already prepared" in caplog.text
    assert again["generation"] == first["generation"]
    other = _make(kind, [*RECORDS[:-1], {"text": "another last record"}])
    with pytest.raises(DatasetError, match="already holds a dataset prepared from other sources"):
        gristmill.prepare(other, out, progress=False, workers=1)


def test_an_iterator_is_read_once_in_one_task_and_never_found_up_to_date(tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        manifest = gristmill.prepare(
            (r for r in RECORDS), out, workers=2, task_bytes=SMALL_TASKS, progress=False
        )
    assert "never found up to date" in caplog.text and "overwrite=True" in caplog.text
    assert manifest["splits"]["train"]["num_documents"] == len(RECORDS)
    assert {name.split("/")[-1][:5] for name in _shards(out) if name.startswith("train/")} == {
        "00000"
    }
    with pytest.raises(DatasetError, match="pass --overwrite"):
        gristmill.prepare(iter(RECORDS), out, progress=False)
    gristmill.prepare(iter(RECORDS[:5]), out, overwrite=True, progress=False)
    assert len(_texts(out)) == 5


def test_a_bad_record_is_named_by_its_index(tmp_path):
    records = [{"text": "fine"}, {"text": "fine too"}, {"body": "no text"}]
    with pytest.raises(DataError, match=r"records\[2\]: .*text"):
        gristmill.prepare(records, tmp_path / "fail", progress=False)
    manifest = gristmill.prepare(records, tmp_path / "skip", on_error="skip", progress=False)
    assert manifest["provenance"]["skipped"] == {"missing-field:text": 1}
    rejected = json.loads((tmp_path / "skip.rejects.jsonl").read_text())
    assert rejected["where"] == "records[2]"


def test_records_beside_specs(write_jsonl, tmp_path):
    path = write_jsonl(RECORDS[:3])
    manifest = gristmill.prepare([path, [{"text": "from memory"}]], tmp_path / "o", progress=False)
    specs = [entry["spec"] for entry in manifest["provenance"]["sources"]]
    assert specs == [str(path), "<list of 1 record, source 1>"]
    assert _texts(tmp_path / "o")[-1] == "from memory<|endoftext|>"


@pytest.mark.parametrize(
    ("sources", "says"),
    [
        ({"text": "one record"}, "give a list of records"),
        (["data.jsonl", {"text": "a record"}], r"sources\[1\] is a record among source specs"),
        (42, "sources must be"),
        ([3.5], r"sources\[0\] must be"),
    ],
)
def test_what_is_not_records_or_specs_is_refused_saying_what_to_give(sources, says, tmp_path):
    with pytest.raises(TypeError, match=says):
        gristmill.prepare(sources, tmp_path / "o", progress=False)


def test_a_dict_of_splits_asks_for_one(tmp_path):
    datasets = pytest.importorskip("datasets", reason="Datasets need the datasets package")
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)})
    with pytest.raises(TypeError, match=r"give one split, e.g. ds\['train'\]"):
        gristmill.prepare(splits, tmp_path / "o", progress=False)


def test_records_take_no_source_options(tmp_path):
    with pytest.raises(OptionError, match="in-memory records take no source options"):
        gristmill.prepare(RECORDS, tmp_path / "o", source_options={"columns": ["text"]})


def test_a_stream_of_records_serves_what_a_stream_of_the_file_serves(write_jsonl):
    # One document a sample: the same whatever the cut into pieces (an IterableDataset's are its
    # shards), which packs each piece on its own.
    options = {"seq_len": 256, "packer": "none"}
    from_file = list(gristmill.stream(write_jsonl(RECORDS), **options))
    for kind in KINDS:
        stream = gristmill.stream(_make(kind), **options)
        for _ in range(2):  # every pass reads them again
            served = list(stream)
            assert [s["input_ids"].tolist() for s in served] == [
                s["input_ids"].tolist() for s in from_file
            ]


def test_a_stream_of_an_iterator_serves_one_pass_and_stays_in_its_process():
    stream = gristmill.stream(iter(RECORDS), seq_len=64)
    assert sum(len(s["seq_lens"]) for s in stream) == len(RECORDS)
    with pytest.raises(GristmillError, match="can be read once, and were read already"):
        list(stream)
    with pytest.raises(GristmillError, match="cannot be sent to another process"):
        pickle.dumps(gristmill.stream(iter(RECORDS), seq_len=64))


@pytest.mark.parametrize("kind", KINDS)
def test_pieces_together_give_the_whole_in_order(kind):
    [source] = source_inputs(_make(kind))
    whole = [record for record, _ in source.records()]
    assert whole == RECORDS
    for pieces in (1, 3, 7, 1000):
        parts = source.split(pieces)
        assert 1 <= len(parts) <= pieces
        joined = [record for part in parts for record, _ in part.records()]
        assert joined == RECORDS
