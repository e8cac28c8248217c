"""A fast tokenizer engine is checked against the reference once per prepare, in the main process,
on the run's first batch; the workers take the result on trust and never load the reference for
plain text, and a fast engine that disagrees is still caught, with the same warning and the same
fallback as when each worker checked it."""

from __future__ import annotations

import logging
import os

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.plugin.components import ExecutorType
from tests.helpers import train_bpe, tree_bytes
from tests.store.engine_workers import ReportingExecutor

pytest.importorskip("gigatoken")
pytest.importorskip("tokenizers")

WORDS = ["mill", "grain", "flour", "stone", "wheel", "water", "river", "sack", "baker", "bread"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> str:
    texts = [" ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(12)) for i in range(200)]
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    train_bpe(texts, vocab_size=300, specials=["<|endoftext|>"]).save(str(path))
    return str(path)


@pytest.fixture
def plain(write_jsonl):
    return write_jsonl(
        [
            {"text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 17))}
            for i in range(300)
        ]
    )


@pytest.fixture
def reporting(gristmill_register):
    record = ExecutorType(name="reporting", description="d", factory=ReportingExecutor)
    plugin = type("P", (), {"gristmill_executors": staticmethod(hookimpl(lambda: [record]))})
    gristmill_register(plugin)
    ReportingExecutor.reports.clear()
    return ReportingExecutor.reports


def _prepare(source, out, tokenizer, caplog, **options) -> list[str]:
    options = {"progress": False, "task_bytes": 3000, **options}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        gristmill.prepare(source, out, tokenizer=tokenizer, **options)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_workers_of_a_plain_text_prepare_never_load_the_reference(
    tokenizer, plain, tmp_path, caplog, reporting
):
    assert (
        _prepare(plain, tmp_path / "fast", tokenizer, caplog, workers=2, executor="reporting") == []
    )
    assert reporting and all(report["pid"] != os.getpid() for report in reporting)
    assert all(report["engine"] == "gigatoken" for report in reporting)
    assert not any(report["tokenizers"] for report in reporting), reporting
    _prepare(plain, tmp_path / "hf", tokenizer, caplog, workers=1, engine="hf")
    assert tree_bytes(tmp_path / "fast") == tree_bytes(tmp_path / "hf")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_fast_engine_that_disagrees_is_caught_once_and_left(
    tokenizer, plain, tmp_path, caplog, reporting, monkeypatch, workers
):
    from gristmill_hf_tokenizers import engines

    encode = engines.Gigatoken._encode

    def wrong(self, texts):  # in this process only: where the check now runs
        ids = encode(self, texts)
        return [doc + 1 for doc in ids]

    monkeypatch.setattr(engines.Gigatoken, "_encode", wrong)
    options = {"workers": workers, "executor": "reporting"}
    [warning] = _prepare(plain, tmp_path / "fast", tokenizer, caplog, **options)
    assert tokenizer in warning
    assert "gives other ids than hf for the text at index 0 of its first batch" in warning
    assert "encoding with hf from now on" in warning
    assert reporting and all(report["engine"] == "hf" for report in reporting)
    _prepare(plain, tmp_path / "hf", tokenizer, caplog, workers=1, engine="hf")
    assert tree_bytes(tmp_path / "fast") == tree_bytes(tmp_path / "hf")
