"""Prepare's summary counts the documents that the tokenizer's reference engine encoded because
the fast engine could not vouch for their offsets: summed over every task, whichever process ran
it, and over the tasks a resumed run finished before."""

from __future__ import annotations

import logging
import re

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.plugin.components import ExecutorType
from tests.helpers import train_bpe, tree_bytes

pytest.importorskip("gigatoken")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["mill", "grain", "flour", "stone", "wheel", "water", "river", "sack", "baker", "bread"]
RECORDS = 120
MASKED = range(0, RECORDS, 4)  # " <mask>": the added token takes the space before it


@pytest.fixture(scope="module")
def lstrip_tokenizer(tmp_path_factory) -> str:
    """A byte-level BPE whose added token ``<mask>`` takes the white space before it: the
    tokens of a text with " <mask>" do not add up to it, so the fast engine cannot place them."""
    texts = [" ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(12)) for i in range(200)]
    tok = train_bpe(texts, vocab_size=300, specials=["<|endoftext|>"])
    tok.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True)])
    path = tmp_path_factory.mktemp("lstrip") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture
def pairs(write_jsonl):
    records = []
    for i in range(RECORDS):
        words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(5 + i % 20))
        prompt = f"{words} <mask> {i}?" if i in MASKED else f"{words} {i}?"
        records.append({"prompt": prompt, "completion": f" {words}."})
    return write_jsonl(records)


def _prepare(source, out, tokenizer, caplog, **options) -> str:
    options = {"progress": False, "task_bytes": 2000, "tokens_per_shard": 500, **options}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gristmill"):
        gristmill.prepare(source, out, tokenizer=tokenizer, **options)
    return caplog.text


def _counted(log: str) -> int | None:
    found = re.search(r"([\d,]+) document\(s\) encoded with the tokenizer's reference engine", log)
    return None if found is None else int(found[1].replace(",", ""))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_summary_counts_the_documents_the_reference_encoded(
    lstrip_tokenizer, pairs, tmp_path, caplog, workers
):
    log = _prepare(pairs, tmp_path / "auto", lstrip_tokenizer, caplog, workers=workers)
    assert _counted(log) == len(MASKED)
    assert f"(unproven-offsets: {len(MASKED)})" in log
    # The reference alone has nothing to count, and the same bytes.
    log = _prepare(pairs, tmp_path / "hf", lstrip_tokenizer, caplog, workers=1, engine="hf")
    assert _counted(log) is None
    assert tree_bytes(tmp_path / "auto") == tree_bytes(tmp_path / "hf")


class _FirstTaskThenInterrupt:
    """Runs the first task, then stops as a Ctrl-C would: the run is left to resume."""

    def __init__(self, workers: int = 1, **options):
        pass

    def map(self, fn, tasks):
        yield fn(tasks[0])
        raise KeyboardInterrupt


def test_a_resumed_run_counts_the_tasks_finished_before(
    lstrip_tokenizer, pairs, tmp_path, caplog, gristmill_register
):
    record = ExecutorType(name="first-only", description="d", factory=_FirstTaskThenInterrupt)
    plugin = type("P", (), {"gristmill_executors": staticmethod(hookimpl(lambda: [record]))})
    gristmill_register(plugin)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        _prepare(pairs, out, lstrip_tokenizer, caplog, workers=1, executor="first-only")
    log = _prepare(pairs, out, lstrip_tokenizer, caplog, workers=1)
    assert "resum" in log  # the first task was not run again
    assert _counted(log) == len(MASKED)
