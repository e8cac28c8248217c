"""Packing metrics per step: every rank's ``loader.metrics()`` equals the figures counted by
brute force from the collated batches that all ranks served that step, for datasets (every
rank's loader built in this process, as ranks build theirs), mixtures and streams (one rank
here, two real ranks on gloo); and a step's figures are known before it is served."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import GristmillError, OptionError
from gristmill.serve.metrics import KEYS
from tests.helpers import examples
from tests.serve.test_sampling import SAMPLERS

torch = pytest.importorskip("torch")
import gristmill.torch  # noqa: E402

SEQ_LEN = 64
COLLATE = gristmill.torch.Collator(padding_free=False, mask="padding")  # rows count each sample
PACKINGS = [(p, SEQ_LEN) for p in ("first-fit", "greedy-stream", "concat-chunk", "none")]
PACKINGS.append(("none", None))  # no seq_len: a row is the step's longest sample


@pytest.fixture(scope="module")
def data(prepared_dataset):
    """Plain text (no loss mask); prompt/completion pairs (loss on the completion only) with
    text documents among them (loss from their first token on); and documents of one to three
    tokens (so that samples end in one-token segments, which shifted labels empty)."""
    rng = np.random.default_rng(5)
    text = [{"text": f"doc {i} " + "w" * int(rng.integers(1, 90))} for i in range(150)]
    pairs = [
        {"prompt": f"q{i} " + "p" * int(rng.integers(1, 40)), "completion": "c" * int(n)}
        for i, n in enumerate(rng.integers(1, 50, 120))
    ]
    short = [{"text": chr(97 + i % 26) * int(n)} for i, n in enumerate(rng.integers(1, 4, 200))]
    return {
        "text": prepared_dataset(text),
        "pairs": prepared_dataset({"pairs": pairs, "text": text[:40]}),
        "short": prepared_dataset(short),
    }


def _seen(batch) -> dict:
    """What one rank's collated batch holds, counted from its tensors."""
    repeat = batch.get("repeat")
    return {
        "lengths": batch["attention_mask"].sum(1).tolist(),
        "sequences": len(batch["seq_lens"]),
        "loss": int((batch["labels"] != -100).sum()),
        "repeats": 0 if repeat is None else int(repeat.sum()),
    }


def _brute(shares: list[dict], row: int | None) -> dict:
    """A step's figures from every rank's :func:`_seen` batch."""
    lengths = [n for share in shares for n in share["lengths"]]
    per_rank = [sum(share["lengths"]) for share in shares]
    n, tokens = len(lengths), sum(lengths)
    return {
        "packing/samples": n,
        "packing/repeats": sum(share["repeats"] for share in shares),
        "packing/tokens": tokens,
        "packing/loss_tokens": sum(share["loss"] for share in shares),
        "packing/seq_len_mean": tokens / n,
        "packing/seq_len_min": min(lengths),
        "packing/seq_len_max": max(lengths),
        "packing/rank_tokens_min": min(per_rank),
        "packing/rank_tokens_max": max(per_rank),
        "packing/padding_fraction": 1 - tokens / (n * (row or max(lengths))),
        "packing/docs_per_sample": sum(share["sequences"] for share in shares) / n,
    }


def _check(got: dict, expected: dict) -> None:
    assert list(got) == list(KEYS)
    assert all(
        type(v) is (float if isinstance(expected[k], float) else int) for k, v in got.items()
    )
    assert got == pytest.approx(expected, abs=1e-12)


def _row(seq_len: int | None, labels: str) -> int | None:
    return seq_len and seq_len - (labels == "shifted")


def _loaders(path, world: int, batch: int, options: dict, loader_options: dict):
    ds = gristmill.open_dataset(path, **options)
    return [
        gristmill.torch.dataloader(
            ds, batch_size=batch, rank=r, world_size=world, collate_fn=COLLATE, **loader_options
        )
        for r in range(world)
    ]


@pytest.mark.parametrize("which", ["text", "pairs", "short"])
@pytest.mark.parametrize("labels", ["unshifted", "shifted"])
@pytest.mark.parametrize("restart", [None, True, False])
@settings(max_examples=examples(0.1), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    packing=st.sampled_from(PACKINGS),
    world=st.integers(1, 4),
    batch=st.integers(1, 4),
    sampler=st.sampled_from(SAMPLERS),
    drop_last=st.booleans(),
)
def test_every_rank_reports_the_figures_all_ranks_served(
    data, which, labels, restart, packing, world, batch, sampler, drop_last
):
    packer, seq_len = packing
    options = {"seq_len": seq_len, "packer": packer, "labels": labels, "restart": restart}
    loader_options = {"sampler": sampler, "drop_last": drop_last}
    loaders = _loaders(data[which], world, batch, options, loader_options)
    ahead = _loaders(data[which], world, batch, options, loader_options)[world - 1]
    its = [iter(loader) for loader in loaders]
    for step in range(len(loaders[0])):
        shares = [_seen(next(it)) for it in its]
        expected = _brute(shares, _row(seq_len, labels))
        for loader in loaders:
            _check(loader.metrics(), expected)
        _check(ahead.metrics(step), expected)  # from the plan, before anything is served
    assert all(next(it, None) is None for it in its)


def test_a_mixture_reports_the_figures_of_both_datasets(data):
    text, pairs = (gristmill.open_dataset(data[k], seq_len=SEQ_LEN) for k in ("text", "pairs"))
    mix = gristmill.mixture({"text": text, "pairs": pairs}, {"text": 1, "pairs": 2})
    loaders, ahead = (
        [
            gristmill.torch.dataloader(mix, batch_size=3, rank=r, world_size=2, collate_fn=COLLATE)
            for r in range(2)
        ]
        for _ in range(2)
    )
    assert len(loaders[0]) > 3
    for step, batches in enumerate(zip(*loaders)):
        expected = _brute([_seen(b) for b in batches], SEQ_LEN)
        for loader in loaders:
            _check(loader.metrics(), expected)
        _check(ahead[0].metrics(step), expected)


@pytest.mark.parametrize("block", [1, 7, 20])
def test_steps_found_a_block_at_a_time_are_those_found_all_at_once(data, monkeypatch, block):
    ds = gristmill.open_dataset(data["pairs"], seq_len=SEQ_LEN, packer="first-fit")
    world, batch = 2, 3  # 6 samples a step: blocks of 1, 1 and 3 steps
    whole = gristmill.torch.dataloader(ds, batch_size=batch, rank=1, world_size=world)
    steps = len(whole)
    expected = [whole.metrics(step) for step in range(steps)]
    monkeypatch.setattr("gristmill.serve.metrics.STEPS_BLOCK", block)
    loader = gristmill.torch.dataloader(ds, batch_size=batch, rank=1, world_size=world)
    order = np.random.default_rng(block).permutation(steps).tolist()
    assert {step: loader.metrics(step) for step in order} == dict(enumerate(expected))


def test_the_loss_of_masked_samples_counts_only_their_completions(data):
    ds = gristmill.open_dataset(data["pairs"], seq_len=SEQ_LEN, packer="none")
    loader = gristmill.torch.dataloader(ds, batch_size=1, sampler="sequential", collate_fn=COLLATE)
    batch = next(iter(loader))
    got = loader.metrics()
    # One pair a sample: its prompt carries no loss, so fewer labels than tokens but one.
    assert 0 < got["packing/loss_tokens"] == int((batch["labels"] != -100).sum())
    assert got["packing/loss_tokens"] < got["packing/tokens"] - 1


def test_what_metrics_refuses_and_the_last_batch_of_an_epoch(data):
    ds = gristmill.open_dataset(data["text"], seq_len=SEQ_LEN)
    loader = gristmill.torch.dataloader(ds, batch_size=4, collate_fn=COLLATE)
    with pytest.raises(GristmillError, match=r"no batch has been handed out yet.*metrics\(step\)"):
        loader.metrics()
    with pytest.raises(GristmillError, match=f"step {len(loader)} is past the end of epoch 0"):
        loader.metrics(len(loader))
    with pytest.raises(OptionError, match="step must be a non-negative integer"):
        loader.metrics(-1)
    batches = list(loader)  # a whole pass: the loader moves on to epoch 1
    assert loader.epoch == 1 and batches
    _check(loader.metrics(), _brute([_seen(batches[-1])], SEQ_LEN))  # still the last batch


# --- streams ----------------------------------------------------------------------------------


def _records(count: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(
        json.dumps(
            {"prompt": f"q{i} " + "p" * int(rng.integers(1, 30)), "completion": "c" * int(n)}
        )
        + "\n"
        for i, n in enumerate(rng.integers(1, 70, count))
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("metrics") / "pairs.jsonl"
    path.write_text(_records(260, 8))
    return path


@pytest.mark.parametrize(
    "options",
    [
        {"seq_len": SEQ_LEN},
        {"seq_len": SEQ_LEN, "labels": "shifted"},
        {"seq_len": SEQ_LEN, "packer": "concat-chunk"},
        {"packer": "none"},  # no seq_len: a row is the step's longest sample
    ],
)
def test_a_stream_reports_the_figures_of_the_batch_just_served(source, options):
    stream = gristmill.stream(source, chunk_bytes=1500, piece_bytes=4000, **options)
    loader = gristmill.torch.dataloader(stream, batch_size=5, num_workers=1, collate_fn=COLLATE)
    with pytest.raises(GristmillError, match="no batch has been served yet"):
        loader.metrics()
    row = _row(options.get("seq_len"), options.get("labels", "unshifted"))
    steps = 0
    for batch in loader:
        _check(loader.metrics(), _brute([_seen(batch)], row))
        steps += 1
    assert steps > 5


STREAM_RANKS = 2


def _stream_rank(rank: int, source: str, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{out}.rendezvous", rank=rank, world_size=STREAM_RANKS
    )
    # Five pieces for two ranks: their shares differ, and the shorter one serves repeats.
    stream = gristmill.stream(source, seq_len=SEQ_LEN, chunk_bytes=2000, piece_bytes=6000)
    loader = gristmill.torch.dataloader(stream, batch_size=3, collate_fn=COLLATE)
    served = []
    for batch in loader:
        gathered = [None] * STREAM_RANKS
        torch.distributed.all_gather_object(gathered, [_seen(batch), loader.metrics()])
        served.append(gathered)
    if rank == 0:
        Path(f"{out}.json").write_text(json.dumps(served))
    torch.distributed.destroy_process_group()


def test_stream_ranks_report_the_figures_of_every_rank(source, tmp_path):
    out = tmp_path / "run"
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_stream_rank, args=(r, str(source), str(out)))
        for r in range(STREAM_RANKS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * STREAM_RANKS
    served = json.loads(Path(f"{out}.json").read_text())
    assert len(served) > 5
    for step in served:
        expected = _brute([seen for seen, _ in step], SEQ_LEN)
        for _, got in step:
            _check(got, expected)
    assert sum(step[0][1]["packing/repeats"] for step in served) > 0  # the repeats are counted
