"""Records that already hold token ids (``input_ids``, with Hugging Face ``labels`` or a
``loss_mask``): stored as they are, checked against the tokenizer's vocabulary, with a bad record
named (file, line, field) and counted like any other; prepare, stream and convert alike."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DataError, FieldError, GristmillError
from gristmill.plugin.components import FieldMapperType
from gristmill.plugin.manager import get_manager
from gristmill.store.convert import convert
from tests.helpers import run_gristmill

GOOD = [
    {"input_ids": [5, 6, 7, 8]},  # every token carries loss
    {"input_ids": [9, 10, 11], "labels": [-100, 10, 11]},
    {"input_ids": [12, 13, 14], "loss_mask": [0, 0, 1]},
    {"input_ids": [1, 2, 3, 0, 0], "attention_mask": [1, 1, 1, 0, 0], "labels": [-100, 2, 3, 0, 0]},
    {"input_ids": [20, 21], "loss_mask": [True, False], "metadata": {"lang": "x"}},
]
# What each GOOD record is stored as: its ids and loss mask (None: every token).
STORED = [
    ([5, 6, 7, 8], None),
    ([9, 10, 11], [0, 1, 1]),
    ([12, 13, 14], [0, 0, 1]),
    ([1, 2, 3], [0, 1, 1]),
    ([20, 21], [1, 0]),
]
# Bad records, with the reason each is counted under.
BAD = [
    ({"input_ids": [4, 300, 5]}, "bad-token-id:input_ids"),  # past the byte vocabulary (259)
    ({"input_ids": [4, -1]}, "bad-token-id:input_ids"),
    ({"input_ids": [4, True]}, "wrong-type:input_ids"),
    ({"input_ids": [4, 5.0]}, "wrong-type:input_ids"),
    ({"input_ids": "4 5"}, "wrong-type:input_ids"),
    ({"input_ids": []}, "empty-field:input_ids"),
    ({"input_ids": [4, 5], "labels": [4]}, "length-mismatch:labels"),
    ({"input_ids": [4, 5], "labels": [5, -100]}, "bad-label:labels"),  # shifted
    ({"input_ids": [4, 5], "labels": [4, 5], "loss_mask": [1, 1]}, "bad-label:labels"),
    ({"input_ids": [4, 5], "loss_mask": [1, 2]}, "bad-mask:loss_mask"),
    ({"input_ids": [4, 5], "labels": [-100, -100]}, "no-loss"),
    ({"input_ids": [4, 5], "attention_mask": [0, 0]}, "empty-field:attention_mask"),
]


def _documents(directory) -> list[tuple[list[int], list[int] | None]]:
    """Each document of a prepared dataset as (ids, loss mask or None: every token)."""
    reader = gristmill.open_dataset(directory).documents
    out = []
    for i in range(reader.num_documents):
        ids, mask = reader.document(i)  # a shard with masks has one for every document
        out.append((ids.tolist(), None if mask is None or mask.all() else mask.tolist()))
    return out


def _samples(samples) -> list[dict[str, list[int]]]:
    return [{k: v.tolist() for k, v in s.items()} for s in samples]


@pytest.fixture
def mixed(write_jsonl):
    """GOOD and BAD records interleaved, in one file."""
    rows = [r for pair in zip(GOOD * 3, BAD) for r in (pair[0], pair[1][0])]
    return write_jsonl(rows, "tokens.jsonl")


def test_records_of_token_ids_are_stored_as_they_are(tmp_path, write_jsonl):
    path = write_jsonl(GOOD)
    manifest = gristmill.prepare(path, tmp_path / "ds", progress=False)
    assert _documents(tmp_path / "ds") == STORED  # the byte tokenizer's EOS is not added
    assert manifest["tokenizer"]["spec"] == "byte" and manifest["dtype"] == "uint16"
    assert manifest["stats"]["metadata"]  # the record's metadata is kept as for text


def test_prepare_stream_and_convert_check_and_count_alike(tmp_path, mixed):
    manifest = gristmill.prepare(mixed, tmp_path / "ds", on_error="skip", progress=False)
    expected = dict(Counter(reason for _, reason in BAD))
    assert manifest["provenance"]["skipped"] == expected
    assert _documents(tmp_path / "ds") == STORED * 2 + STORED[:2]
    stream = gristmill.stream(mixed, packer="none", on_error="skip")
    prepared = gristmill.open_dataset(tmp_path / "ds", packer="none")
    assert _samples(stream) == _samples(prepared)
    assert stream.stats.skipped == expected
    # convert has no tokenizer: what only a vocabulary or the loss decides is left to prepare.
    out = tmp_path / "out.jsonl"
    summary = convert(mixed, out, on_error="skip")
    without_tokenizer = {k: v for k, v in expected.items() if k != "no-loss"}
    without_tokenizer["bad-token-id:input_ids"] -= 1  # 300 is an id; whose, convert cannot say
    assert summary["skipped"] == without_tokenizer
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[0] == {"input_ids": [5, 6, 7, 8]}
    assert written[1] == {"input_ids": [4, 300, 5]}
    assert written[2] == {"input_ids": [9, 10, 11], "loss_mask": [0, 1, 1]}


def test_the_converted_file_prepares_to_the_same_documents(tmp_path, write_jsonl):
    pytest.importorskip("pyarrow", reason="writing Parquet needs pyarrow")
    path = write_jsonl(GOOD)
    convert(path, tmp_path / "out.parquet")
    convert(path, tmp_path / "out.jsonl")
    for name in ("out.parquet", "out.jsonl"):
        gristmill.prepare(tmp_path / name, tmp_path / f"ds-{name}", progress=False)
        assert _documents(tmp_path / f"ds-{name}") == STORED, name


def test_token_ids_and_text_cannot_share_one_parquet_file(tmp_path, write_jsonl):
    pytest.importorskip("pyarrow", reason="writing Parquet needs pyarrow")
    ids = write_jsonl(GOOD[:1], "ids.jsonl")
    text = write_jsonl([{"text": "hello"}], "text.jsonl")
    with pytest.raises(DataError, match=r"text.jsonl:1: .*cannot share one Parquet file"):
        convert([ids, text], tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_an_id_past_the_vocabulary_names_the_file_line_and_field(tmp_path, write_jsonl):
    path = write_jsonl([GOOD[0], {"input_ids": [1, 2]}, {"input_ids": [1, 259, 2]}])
    with pytest.raises(DataError) as raised:
        gristmill.prepare(path, tmp_path / "ds", progress=False)
    assert str(raised.value) == (
        f"{path}:3: field 'input_ids': input_ids[1] is 259, outside the tokenizer's vocabulary "
        "of 259 ids (0 to 258): give the tokenizer that made these ids (--tokenizer), or ids "
        "below its vocabulary size"
    )
    with pytest.raises(DataError, match=r":3: field 'input_ids': input_ids\[1\] is 259"):
        list(gristmill.stream(path, packer="none"))


def test_the_cli_names_the_record_and_the_field(tmp_path, write_jsonl):
    path = write_jsonl([{"input_ids": [1, 2], "labels": [2, -100]}])
    result = run_gristmill("prepare", str(path), "-o", str(tmp_path / "ds"), "--no-progress")
    assert result.returncode == 2
    assert f"{path}:1: field 'labels': labels[0] is 2 where input_ids[0] is 1" in result.stderr


def test_the_tokenizers_vocabulary_bounds_the_ids(tmp_path, write_jsonl):
    """A tokenizer of 70,000 ids takes ids the byte tokenizer refuses, and uint32 shards."""
    path = write_jsonl([{"input_ids": [65_000, 69_999, 3]}])
    with pytest.raises(DataError, match="outside the tokenizer's vocabulary of 259 ids"):
        gristmill.prepare(path, tmp_path / "byte", progress=False)
    manifest = gristmill.prepare(path, tmp_path / "ds", tokenizer="ids:70000", progress=False)
    assert manifest["dtype"] == "uint32"
    assert manifest["tokenizer"]["vocab_size"] == 70_000
    ds = gristmill.open_dataset(tmp_path / "ds", packer="none")
    assert ds[0]["input_ids"].tolist() == [65_000, 69_999, 3]
    assert ds.tokenizer.decode([65_000, 3]) == "65000 3"


def test_a_dataset_of_ids_verifies(tmp_path, write_jsonl):
    path = write_jsonl(GOOD)
    gristmill.prepare(path, tmp_path / "ds", tokenizer="ids:100", progress=False)
    result = run_gristmill("verify", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_text_and_token_ids_in_one_run_each_get_their_due(tmp_path, write_jsonl):
    """Text is tokenized (with the tokenizer's EOS); ids are stored as given (without)."""
    text = write_jsonl([{"text": "hi"}], "text.jsonl")
    ids = write_jsonl([{"input_ids": [104, 105]}], "ids.jsonl")
    gristmill.prepare([text, ids], tmp_path / "ds", progress=False)
    ds = gristmill.open_dataset(tmp_path / "ds", packer="none")
    assert [s["input_ids"].tolist() for s in ds] == [[104, 105, 256], [104, 105]]


def test_the_ids_tokenizer_refuses_text_naming_the_record(tmp_path, write_jsonl):
    path = write_jsonl([GOOD[0], {"text": "hello"}], "mixed.jsonl")
    ids = write_jsonl(GOOD[:1], "ids.jsonl")
    text = write_jsonl([{"text": "hello"}], "text.jsonl")
    with pytest.raises(DataError, match=r"text.jsonl:1: the tokenizer ids:100 knows token ids"):
        gristmill.prepare([ids, text], tmp_path / "ds", tokenizer="ids:100", on_error="skip")
    # One file of both: the format is the first record's, and the other is named as such.
    with pytest.raises(DataError) as raised:
        gristmill.prepare(path, tmp_path / "ds2", tokenizer="ids:100", progress=False)
    assert f"{path}:2: field 'input_ids': missing" in str(raised.value)
    assert "this record is in the text format, but its source's first record chose token-ids" in (
        str(raised.value)
    )


def test_train_on_prompt_and_max_doc_tokens_apply_as_for_text(tmp_path, write_jsonl):
    path = write_jsonl([{"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}])
    gristmill.prepare(path, tmp_path / "all", train_on_prompt=True, progress=False)
    assert _documents(tmp_path / "all") == [([1, 2, 3, 4], None)]
    manifest = gristmill.prepare(path, tmp_path / "cut", max_doc_tokens=3, progress=False)
    assert _documents(tmp_path / "cut") == [([1, 2, 3], [0, 0, 1])]
    assert manifest["provenance"]["truncated"] == 1
    with pytest.raises(DataError, match="no token carries loss within the first 2 tokens"):
        gristmill.prepare(path, tmp_path / "none", max_doc_tokens=2, progress=False)


def test_columns_of_other_names_through_fields(tmp_path, write_jsonl):
    path = write_jsonl([{"tokens": [7, 8, 9], "targets": [-100, 8, 9]}])
    gristmill.prepare(
        path, tmp_path / "ds", fields={"input_ids": "tokens", "labels": "targets"}, progress=False
    )
    assert _documents(tmp_path / "ds") == [([7, 8, 9], [0, 1, 1])]


def test_the_format_is_chosen_over_text_when_a_record_has_both(write_jsonl, caplog, tmp_path):
    path = write_jsonl([{"text": "ab", "input_ids": [1, 2]}])
    with caplog.at_level("INFO", logger="gristmill"):
        gristmill.prepare(path, tmp_path / "ds", progress=False)
    assert "format token-ids (chosen from its keys)" in caplog.text
    gristmill.prepare(path, tmp_path / "text", format="text", progress=False)
    ds = gristmill.open_dataset(tmp_path / "text", packer="none")
    assert ds[0]["input_ids"].tolist() == [97, 98, 256]


def test_numpy_arrays_in_records_are_ids_too():
    mapper = get_manager().get(FieldMapperType, "token-ids").factory({})
    example = mapper({"input_ids": np.array([3, 4], np.uint16), "loss_mask": np.array([0, 1])})
    assert example.input_ids == (3, 4) and example.loss_mask == (0, 1)
    with pytest.raises(FieldError, match=r"input_ids\[0\] is float 1.5"):
        mapper({"input_ids": np.array([1.5])})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)
INTS = st.lists(st.integers(-200, 2**64), max_size=6)
REASONS = {"missing-field", "wrong-type", "empty-field", "bad-token-id", "length-mismatch"}
REASONS |= {"bad-label", "bad-mask"}


@given(
    ids=st.one_of(JSON, INTS),
    labels=st.one_of(st.none(), JSON, INTS),
    mask=st.one_of(st.none(), JSON, st.lists(st.sampled_from([0, 1, True]), max_size=6)),
    attention=st.one_of(st.none(), st.lists(st.integers(0, 1), max_size=6)),
)
def test_the_mapper_gives_an_example_or_a_field_error(ids, labels, mask, attention):
    mapper = get_manager().get(FieldMapperType, "token-ids").factory({})
    record = {"input_ids": ids, "labels": labels, "loss_mask": mask, "attention_mask": attention}
    try:
        example = mapper(record)
    except FieldError as exc:
        assert exc.reason in REASONS and exc.field in record and str(exc)
        return
    assert example.input_ids and all(type(i) is int and 0 <= i < 2**63 for i in example.input_ids)
    if example.loss_mask is not None:
        assert len(example.loss_mask) == len(example.input_ids)
        assert set(example.loss_mask) == {0, 1}  # all ones is stored as None


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("ids", {}, "write ids:VOCAB"),
        ("ids:0", {}, "write ids:VOCAB"),
        ("ids:many", {}, "write ids:VOCAB"),
        ("ids:4294967297", {}, "write ids:VOCAB"),
        ("ids:10", {"eos_id": 10}, "eos_id 10 is not below the vocabulary size 10"),
        ("ids:10", {"pad_id": -1}, "pad_id must be a non-negative integer"),
        ("ids:10", {"add_eos": True}, "tokenizer 'ids' has no option 'add_eos'"),
    ],
)
def test_the_ids_tokenizer_refuses_a_spec_or_option_it_cannot_take(
    tmp_path, write_jsonl, spec, options, message
):
    path = write_jsonl(GOOD[:1])
    with pytest.raises(GristmillError, match=message):
        gristmill.prepare(path, tmp_path / "ds", tokenizer=spec, tokenizer_options=options)


def test_the_ids_tokenizers_specials_are_kept_and_named(tmp_path, write_jsonl):
    path = write_jsonl([{"input_ids": [5, 6, 7, 9]}])
    manifest = gristmill.prepare(
        path,
        tmp_path / "ds",
        tokenizer="ids:10",
        tokenizer_options={"eos_id": 9, "bos_id": 0},
        max_doc_tokens=3,
        progress=False,
    )
    assert (manifest["tokenizer"]["eos_id"], manifest["tokenizer"]["bos_id"]) == (9, 0)
    assert _documents(tmp_path / "ds") == [([5, 6, 9], None)]  # truncated, the EOS kept last
    tokenizer = gristmill.open_dataset(tmp_path / "ds").tokenizer  # the saved copy, reloaded
    assert (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.add_eos) == (10, 9, False)
    assert tokenizer.decode([0, 5, 9]) == "<|bos|> 5 <|eos|>"
