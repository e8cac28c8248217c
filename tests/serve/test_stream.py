"""``gristmill.stream``: the samples of prepare + open_dataset, with nothing written."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import gristmill
from gristmill.errors import DataError, GristmillError


@pytest.fixture
def sources(write_jsonl):
    rng = np.random.default_rng(1)
    chat = [
        {
            "prompt": f"q{i} " * int(rng.integers(1, 40)),
            "completion": f"a{i} " * int(rng.integers(1, 9)),
        }
        for i in range(150)
    ]
    text = [{"text": f"doc{i} " * int(rng.integers(1, 90))} for i in range(250)]
    return [write_jsonl(chat, "chat.jsonl"), write_jsonl(text, "text.jsonl")]


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


@pytest.mark.parametrize(
    "options",
    [
        {"packer": "greedy-stream", "seq_len": 256},
        {"packer": "greedy-stream", "seq_len": 100, "packer_options": {"buffer_size": 3}},
        {"packer": "greedy-stream", "seq_len": 100, "overlong": "fragment", "labels": "shifted"},
        {"packer": "greedy-stream", "seq_len": 100, "overlong": "drop"},
        {"packer": "concat-chunk", "seq_len": 300},
        {"packer": "concat-chunk", "seq_len": 97, "restart": True, "labels": "shifted"},
        {"packer": "none", "seq_len": 64},
        {"packer": "none"},
    ],
)
def test_a_stream_serves_what_the_prepared_dataset_serves(tmp_path, sources, options):
    gristmill.prepare(sources, tmp_path / "ds", progress=False)
    prepared = list(gristmill.open_dataset(tmp_path / "ds", **options))
    streamed = gristmill.stream(sources, **options)
    assert _equal(list(streamed), prepared)
    assert _equal(list(streamed), prepared)  # every pass reads the sources again
    stats = streamed.stats
    manifest = gristmill.open_dataset(tmp_path / "ds").manifest["splits"]["train"]
    assert (stats.documents, stats.tokens) == (manifest["num_documents"], manifest["num_tokens"])
    assert stats.samples == len(prepared)
    assert stats.served == sum(int(s["seq_lens"].sum()) for s in prepared) + (
        len(prepared) if options.get("labels") == "shifted" else 0
    )
    seq_len = options.get("seq_len")
    if seq_len:
        assert stats.efficiency == stats.served / (stats.samples * seq_len)
    assert stats.dropped == gristmill.open_dataset(tmp_path / "ds", **options).plan.dropped


def test_stream_reports_efficiency_and_skips(tmp_path, write_jsonl, caplog):
    path = write_jsonl([{"text": "abc" * 20}, "{not json", {"text": "de" * 20}, {"text": 7}])
    with pytest.raises(DataError, match=r"data\.jsonl:2"):
        list(gristmill.stream(path, seq_len=128))
    skipping = gristmill.stream(path, seq_len=128, packer="none", on_error="skip")
    with caplog.at_level(logging.INFO, logger="gristmill"):
        samples = list(skipping)
    assert skipping.stats.documents == 2 and sum(skipping.stats.skipped.values()) == 2
    # Byte tokens and an EOS each: 61 and 41 tokens, one document per sample.
    assert len(samples) == 2 and skipping.stats.efficiency == (61 + 41) / (2 * 128)
    assert "skipped 2 record(s) (malformed-json: 1, wrong-type:text: 1)" in caplog.text
    assert "stream: 2 samples from 2 documents, 39.8% full" in caplog.text


def test_stream_refuses_what_it_cannot_do_before_reading(tmp_path, write_jsonl):
    path = write_jsonl([{"text": "x"}])
    with pytest.raises(DataError, match="first-fit packer needs every document's length") as e:
        gristmill.stream(path, seq_len=64, packer="first-fit")
    assert "concat-chunk, greedy-stream, none" in str(e.value)
    with pytest.raises(GristmillError, match="pass seq_len"):
        gristmill.stream(path)
    with pytest.raises(GristmillError, match="no packer"):
        gristmill.stream(path, seq_len=8, packer="best")
    with pytest.raises(GristmillError, match="labels must be one of"):
        gristmill.stream(path, seq_len=8, labels="next")
    with pytest.raises(GristmillError, match="on_error must be one of"):
        gristmill.stream(path, seq_len=8, on_error="ignore")
    with pytest.raises(GristmillError, match="overlong must be one of"):
        gristmill.stream(path, seq_len=8, overlong="split")
    with pytest.raises(GristmillError, match="not found"):
        gristmill.stream(tmp_path / "missing.jsonl", seq_len=8)


def test_a_stream_in_several_dataloader_workers_is_refused(write_jsonl):
    torch = pytest.importorskip("torch")
    path = write_jsonl([{"text": f"doc {i}"} for i in range(20)])

    class Samples(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(gristmill.stream(path, seq_len=32))

    loader = torch.utils.data.DataLoader(
        Samples(), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    with pytest.raises(Exception, match="read by 2 DataLoader workers would serve every sample"):
        list(loader)
    one = torch.utils.data.DataLoader(Samples(), batch_size=None, num_workers=1)
    served = sum(len(s["input_ids"]) for s in one)
    assert served == sum(len(f"doc {i}") + 1 for i in range(20))  # bytes and an EOS each
