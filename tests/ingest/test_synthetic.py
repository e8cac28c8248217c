"""The ``synthetic:`` source: random token documents for testing a trainer without data.

Options in the spec or in ``source_options``; the same spec gives byte-identical data for any
worker count; no tokenizer file or download (its ids belong to ``ids:VOCAB``); and, streamed,
every document reaches exactly one rank and worker (the "distributed dummy" case)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DataError, OptionError
from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import Where
from gristmill.plugin.manager import get_manager
from gristmill.testing import Unavailable, conformance
from tests.helpers import examples, run_gristmill, tree_bytes

SPEC = "synthetic:documents=40,length=3..30,vocab_size=500,seed=7"

# The ids tokenizer encodes no text, which the kit's tokenizer checks are made of: its contract
# (ids bounded, saved and reloaded, text refused) is tested in test_pretokenized.py.
NO_TEXT = Unavailable("the ids tokenizer encodes no text (tests/ingest/test_pretokenized.py)")
test_the_plugin_conforms = conformance(
    "synthetic", sources={"synthetic": SPEC}, tokenizers={"ids": NO_TEXT}
)


def _opened(spec: str, **options):
    [source] = open_sources([spec], get_manager(), options)
    return source


def _documents(spec: str, **options) -> list[list[int]]:
    return [record["input_ids"] for record, _ in _opened(spec, **options).records()]


def test_documents_follow_the_options():
    docs = _documents(SPEC)
    assert len(docs) == 40
    assert all(3 <= len(d) <= 30 for d in docs) and len({len(d) for d in docs}) > 5
    assert all(0 <= i < 500 for d in docs for i in d) and len({i for d in docs for i in d}) > 300
    assert _documents(SPEC) == docs  # the same every time
    assert _documents(SPEC.replace("seed=7", "seed=8")) != docs
    assert {len(d) for d in _documents("synthetic:documents=30,length=7")} == {7}
    uniform = Counter(len(d) for d in _documents("synthetic:documents=2000,length=1..4"))
    assert sorted(uniform) == [1, 2, 3, 4] and min(uniform.values()) > 400


def test_lognormal_lengths_have_the_mean_asked_for():
    lengths = [len(d) for d in _documents("synthetic:documents=4000,length=100,sigma=0.5")]
    assert min(lengths) >= 1 and max(lengths) > 200  # a long tail
    assert abs(np.mean(lengths) / 100 - 1) < 0.05
    # the spread of the logarithm, within sampling error
    assert abs(np.std(np.log(lengths)) - 0.5) < 0.05


def test_the_defaults():
    source = _opened("synthetic:")
    assert source.settings.vocab_size == 50257 and source.count == 1000
    first = next(iter(source.records()))
    assert len(first[0]["input_ids"]) == 512
    assert first[1] == Where("synthetic:", 1, "row")


def test_options_in_the_spec_or_in_source_options_are_the_same():
    by_spec = _documents("synthetic:documents=5,length=2..4,seed=3")
    assert _documents("synthetic:", documents=5, length="2..4", seed=3) == by_spec
    assert _documents("synthetic:seed=3", documents=5, length=[2, 4]) == by_spec
    assert _documents("synthetic:documents=5,seed=3", documents=5, length=(2, 4)) == by_spec


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("synthetic:documents=5", {"documents": 6}, "documents is '5' in the spec and 6 in"),
        ("synthetic:lenght=5", {}, "has no option 'lenght'; did you mean length?"),
        ("synthetic:documents", {}, "expected NAME=VALUE pairs separated by commas"),
        ("synthetic:seed=1,seed=2", {}, "seed is given twice"),
        ("synthetic:documents=ten", {}, "documents must be a positive integer, got 'ten'"),
        ("synthetic:vocab_size=0", {}, "vocab_size must be a positive integer, got 0"),
        ("synthetic:vocab_size=4294967297", {}, "vocab_size must be at most 4,294,967,296"),
        ("synthetic:length=9..3", {}, "needs MIN <= MAX, got 9..3"),
        ("synthetic:length=1..9,sigma=1", {}, "give length=N with it, not a range"),
        ("synthetic:sigma=-1", {}, "sigma must be a number above 0, got '-1'"),
        ("synthetic:", {"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
        ("synthetic:", {"length": [1, 2, 3]}, "length takes N, or MIN..MAX"),
    ],
)
def test_a_bad_option_is_refused_naming_it(spec, options, message):
    with pytest.raises(OptionError) as raised:
        _opened(spec, **options)
    assert message in str(raised.value) and spec in str(raised.value)


@settings(max_examples=examples(0.5))
@given(documents=st.integers(1, 60), pieces=st.integers(1, 80), low=st.integers(1, 9))
def test_pieces_are_runs_of_documents_that_make_the_whole(documents, pieces, low):
    source = _opened(f"synthetic:documents={documents},length={low}..{low + 5},vocab_size=97")
    whole = list(source.records())
    parts = source.split(pieces)
    assert 1 <= len(parts) <= pieces
    assert [item for part in parts for item in part.records()] == whole
    assert [where.line for _, where in whole] == list(range(1, documents + 1))
    assert sum(part.nbytes() for part in parts) == pytest.approx(source.nbytes(), abs=len(parts))


def test_the_same_spec_gives_the_same_dataset_for_any_worker_count(tmp_path):
    for workers in (1, 2):
        manifest = gristmill.prepare(
            SPEC, tmp_path / f"w{workers}", workers=workers, task_bytes=400, progress=False
        )
        assert len(manifest["splits"]["train"]["shards"]) > 2  # several tasks
    assert tree_bytes(tmp_path / "w1") == tree_bytes(tmp_path / "w2")
    ds = gristmill.open_dataset(tmp_path / "w1", packer="none")
    assert [s["input_ids"].tolist() for s in ds] == _documents(SPEC)
    assert ds.manifest["tokenizer"]["spec"] == "ids:500" and ds.manifest["dtype"] == "uint16"


def test_the_cli_prepares_a_synthetic_dataset_with_no_tokenizer_and_no_download(tmp_path):
    spec = "synthetic:documents=50,length=8..64,vocab_size=70000"
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = run_gristmill(
        "prepare", spec, "-o", str(tmp_path / "ds"), "--no-progress", env=offline
    )
    assert result.returncode == 0, result.stderr
    assert "format token-ids (chosen from its keys)" in result.stderr
    manifest = gristmill.open_dataset(tmp_path / "ds").manifest
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["name"] == "ids"
    assert manifest["splits"]["train"]["num_documents"] == 50
    shown = run_gristmill("inspect", str(tmp_path / "ds"), "--decode", "1")
    assert shown.returncode == 0 and "tokenizer ids:70000: vocabulary 70,000" in shown.stdout


def test_a_tokenizer_the_user_names_bounds_the_ids(tmp_path):
    small = "synthetic:documents=3,length=5,vocab_size=259"
    gristmill.prepare(small, tmp_path / "byte", tokenizer="byte", progress=False)
    ds = gristmill.open_dataset(tmp_path / "byte", packer="none")
    assert [s["input_ids"].tolist() for s in ds] == _documents(small)  # no EOS added
    with pytest.raises(
        DataError, match=r"synthetic:documents=3,length=5: row 1: field 'input_ids'"
    ):
        gristmill.prepare("synthetic:documents=3,length=5", tmp_path / "x", tokenizer="byte")


def test_sources_of_two_vocabularies_ask_for_a_tokenizer(tmp_path):
    specs = ["synthetic:documents=3,vocab_size=100", "synthetic:documents=2,vocab_size=200"]
    with pytest.raises(DataError, match="hold the ids of different tokenizers"):
        gristmill.prepare(specs, tmp_path / "ds", progress=False)
    manifest = gristmill.prepare(specs, tmp_path / "ds", tokenizer="ids:200", progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 5


def test_a_stream_needs_no_tokenizer_either():
    stream = gristmill.stream(
        "synthetic:documents=100,length=10..90,vocab_size=1000", seq_len=128, chunk_bytes=2000
    )
    samples = list(stream)
    assert stream.tokenizer.vocab_size == 1000 and len(stream.pieces) > 4
    assert stream.stats.documents == 100 and samples
    assert all(len(s["input_ids"]) <= 128 for s in samples)


# --- ranks and DataLoader workers ------------------------------------------------------------


def _served(stream, world: int, workers: int) -> Counter:
    """Each document served, counted, over every rank and DataLoader worker of a stream."""
    torch = pytest.importorskip("torch", reason="ranks and workers are torch's DataLoader's")
    import gristmill.torch

    served: Counter = Counter()
    for rank in range(world):
        dataset = gristmill.torch.StreamDataset(stream, rank=rank, world_size=world, shuffle=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, collate_fn=lambda s: s
        )
        served.update(tuple(s["input_ids"].tolist()) for s in loader)
    return served


def _dummy(documents: int, chunk_bytes: int):
    spec = f"synthetic:documents={documents},length=1..40,vocab_size=3000"
    expected = Counter(tuple(d) for d in _documents(spec))
    stream = gristmill.stream(spec, packer="none", chunk_bytes=chunk_bytes, piece_bytes=chunk_bytes)
    return stream, expected


def test_two_ranks_of_two_workers_serve_every_document_once():
    stream, expected = _dummy(200, 1000)
    assert len(stream.pieces) >= 8
    assert _served(stream, 2, 2) == expected


@settings(max_examples=examples(0.2))
@given(
    documents=st.integers(1, 80),
    chunk_bytes=st.integers(100, 3000),
    world=st.integers(1, 4),
    workers=st.integers(0, 3),
)
def test_any_ranks_and_workers_serve_every_document_once(documents, chunk_bytes, world, workers):
    stream, expected = _dummy(documents, chunk_bytes)
    assert _served(stream, world, workers) == expected
