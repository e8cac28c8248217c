"""``gristmill convert``: any source to one plain file of canonical records."""

from __future__ import annotations

import json

import pytest

import gristmill
from gristmill.cli import main
from gristmill.errors import DataError, DatasetError
from gristmill.store.convert import convert
from tests.helpers import tree_bytes


def test_convert_then_prepare_gives_the_same_tokens(tmp_path):
    out = tmp_path / "qa.jsonl"
    assert main(["convert", "sample:stdlib-qa", "-o", str(out)]) == 0
    first = json.loads(out.open().readline())
    assert set(first) == {"prompt", "completion"}
    gristmill.prepare("sample:stdlib-qa", tmp_path / "direct", progress=False)
    gristmill.prepare(out, tmp_path / "converted", progress=False)
    direct, converted = tree_bytes(tmp_path / "direct"), tree_bytes(tmp_path / "converted")
    shards = [k for k in direct if k.startswith("train/")]
    assert shards and all(direct[k] == converted[k] for k in shards)


def test_convert_chat_with_skip_and_refusals(tmp_path, write_jsonl):
    src = write_jsonl(
        [
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            {"conversations": [{"from": "alien", "value": "?"}]},
        ]
    )
    out = tmp_path / "chat.jsonl"
    with pytest.raises(DataError, match=r"data.jsonl:2: field 'conversations\[0\].from'"):
        convert(src, out)
    assert not out.exists()
    result = convert(src, out, on_error="skip")
    assert result == {"records": 1, "skipped": {"bad-role:conversations[].from": 1}}
    assert json.loads(out.read_text()) == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    assert (tmp_path / "chat.jsonl.rejects.jsonl").exists()
    with pytest.raises(DatasetError, match="exists; pass --overwrite"):
        convert(src, out)
    with pytest.raises(DataError, match=r"must end in \.jsonl or \.parquet"):
        convert(src, tmp_path / "x.csv")


def test_convert_to_parquet_reads_back(tmp_path, write_jsonl):
    pq = pytest.importorskip("pyarrow.parquet")
    src = write_jsonl(
        [{"question": "q1", "answer": "a1", "metadata": {"lang": "en", "n": 1}}, {"text": "x"}]
    )
    out = tmp_path / "mixed.parquet"
    assert convert(src, out, format="auto", on_error="skip")["records"] == 1
    rows = pq.read_table(out).to_pylist()
    assert rows == [
        {
            "text": None,
            "prompt": "q1",
            "completion": "a1",
            "system": None,
            "messages": None,
            "metadata": '{"lang": "en", "n": 1}',
        }
    ]


def test_a_converted_parquet_file_prepares_like_its_source(tmp_path, write_jsonl):
    pytest.importorskip("pyarrow")
    src = write_jsonl([{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    convert(src, tmp_path / "pairs.parquet")
    gristmill.prepare(src, tmp_path / "from-jsonl", progress=False)
    gristmill.prepare(tmp_path / "pairs.parquet", tmp_path / "from-parquet", progress=False)
    a, b = tree_bytes(tmp_path / "from-jsonl"), tree_bytes(tmp_path / "from-parquet")
    assert [k for k in a if k.startswith("train/")] == [k for k in b if k.startswith("train/")]
    assert all(a[k] == b[k] for k in a if k.startswith("train/"))
