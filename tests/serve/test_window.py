"""The window packer (best fit within a sliding window of the next documents, in corpus order),
and component names as users type them (``first_fit``, ``window_16``) at every door."""

from __future__ import annotations

import bisect
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gristmill
from gristmill import hookimpl
from gristmill.config import ConfigError, from_config
from gristmill.errors import DatasetError, OptionError, PluginError, UnknownComponentError
from gristmill.layout import PLANS_DIR
from gristmill.plugin.components import FieldMapperType, PackerType, SamplerType
from gristmill.plugin.overlong import POLICIES, pieces
from gristmill.testing import conformance
from gristmill_first_fit import FirstFitPacker
from gristmill_window import DEFAULT_WINDOW, WindowPacker
from tests.helpers import run_gristmill
from tests.serve.test_online_packing import _in_batches, _same
from tests.serve.test_packing import _check, _samples

# Small enough for the reference model below, which is quadratic in the pieces; with lengths
# repeated often enough that a window holds equal ones.
LENGTHS = st.lists(st.integers(0, 300) | st.sampled_from([1, 2, 3, 5, 8]), max_size=150)
SEQ_LENS = st.one_of(st.sampled_from([4, 8, 64, 2048]), st.integers(4, 500))
WINDOWS = st.one_of(st.sampled_from([1, 2, DEFAULT_WINDOW]), st.integers(1, 40))

test_conformance = conformance("window")


def _reference(sizes: list[int], seq_len: int, window: int) -> list[list[int]]:
    """The packing docs/packing.md defines, spelled out plainly: pieces by number, per sample."""
    unplaced = list(range(len(sizes)))
    samples = []
    while unplaced:
        sample = [unplaced.pop(0)]  # the earliest piece not placed opens the sample
        free = seq_len - sizes[sample[0]]
        while True:
            fits = [p for p in unplaced[:window] if sizes[p] <= free]
            if not fits:
                break
            best = max(fits, key=lambda p: (sizes[p], -p))  # the longest, the earliest of equals
            unplaced.remove(best)
            sample.append(best)
            free -= sizes[best]
        samples.append(sample)
    return samples


def _next_fit(sizes: list[int], seq_len: int) -> list[list[int]]:
    samples: list[list[int]] = []
    free = 0
    for piece, size in enumerate(sizes):
        if samples and size <= free:
            samples[-1].append(piece)
            free -= size
        else:
            samples.append([piece])
            free = seq_len - size
    return samples


def _numbered(plan, lengths: np.ndarray, seq_len: int, overlong: str) -> list[list[int]]:
    """The plan's samples as the numbers of their pieces in split order (the overlong policy's
    pieces, numbered as :func:`gristmill.plugin.overlong.pieces` lists them)."""
    kept = pieces(lengths, seq_len, overlong)
    number = {(d, s): k for k, (d, s) in enumerate(zip(kept.doc.tolist(), kept.start.tolist()))}
    served = [number[d, s] for d, s in zip(plan.seg_doc.tolist(), plan.seg_start.tolist())]
    b = plan.sample_bounds.tolist()
    return [served[b[i] : b[i + 1]] for i in range(len(plan))]


def _overtaken(served: list[int]) -> list[int]:
    """For each piece in serving order, how many pieces before it in the split are served after
    it."""
    seen: list[int] = []
    out = []
    for piece in served:
        out.append(piece - bisect.bisect_left(seen, piece))
        bisect.insort(seen, piece)
    return out


@given(
    lengths=LENGTHS,
    seq_len=SEQ_LENS,
    overlong=st.sampled_from(POLICIES),
    window=WINDOWS,
    cuts=st.lists(st.integers(0, 200), max_size=5),
)
def test_window_places_every_piece_once_near_its_place(lengths, seq_len, overlong, window, cuts):
    lengths = np.asarray(lengths, np.int64)
    packer = WindowPacker(overlong=overlong, window=window)
    plan = packer.plan(lengths, seq_len)
    # Every token the policy keeps exactly once (drops counted), no sample over seq_len.
    _check(lengths, seq_len, plan, overlong, best_fit_bound=False)
    samples = _numbered(plan, lengths, seq_len, overlong)
    sizes = pieces(lengths, seq_len, overlong).length.tolist()
    assert samples == _reference(sizes, seq_len, window)
    served = [piece for sample in samples for piece in sample]
    # Order locality: no piece is served ahead of `window` or more pieces that come before it,
    # and every sample opens with the earliest piece not served yet.
    assert max(_overtaken(served), default=0) <= window - 1
    later = np.minimum.accumulate(np.asarray(served[::-1], np.int64))[::-1]
    assert [s[0] for s in samples] == later[plan.sample_bounds[:-1]].tolist()

    def bounded(online):  # at most `window` pieces and one open sample held back
        held = online.window
        assert not held.waiting and held.held < window
        assert len(online.segments) == held.held + len(held.sample or [])

    # Online, in batches of any size: the same samples, memory bounded by the window.
    assert _same(_in_batches(packer, lengths, seq_len, cuts, bounded), plan)
    assert _same(WindowPacker(overlong=overlong, window=window).plan(lengths.copy(), seq_len), plan)


@given(lengths=LENGTHS, seq_len=SEQ_LENS, overlong=st.sampled_from(POLICIES))
def test_a_window_of_one_is_next_fit(lengths, seq_len, overlong):
    lengths = np.asarray(lengths, np.int64)
    plan = WindowPacker(overlong=overlong, window=1).plan(lengths, seq_len)
    sizes = pieces(lengths, seq_len, overlong).length.tolist()
    assert _numbered(plan, lengths, seq_len, overlong) == _next_fit(sizes, seq_len)


@given(lengths=LENGTHS, seq_len=SEQ_LENS)
def test_a_window_over_the_whole_split_leaves_no_room_a_later_piece_fits(lengths, seq_len):
    lengths = np.asarray(lengths, np.int64)
    plan = WindowPacker(window=max(1, len(lengths))).plan(lengths, seq_len)
    if len(plan) < 2:
        return
    bounds = plan.sample_bounds
    free = seq_len - np.add.reduceat(plan.seg_len, bounds[:-1])
    shortest = np.minimum.reduceat(plan.seg_len, bounds[:-1])
    shortest_after = np.minimum.accumulate(shortest[::-1])[::-1][1:]
    # When a sample closed, every piece left was a candidate, and none fitted.
    assert (free[:-1] < shortest_after).all()


def test_larger_windows_approach_first_fit():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.5, 1.0, 20_000).astype(np.int64), 1, 4000)
    first_fit = len(FirstFitPacker().plan(lengths, 2048))
    counts = [len(WindowPacker(window=n).plan(lengths, 2048)) for n in (1, 4, 16, 64, len(lengths))]
    assert counts == sorted(counts, reverse=True) and counts[0] > 1.15 * first_fit
    assert counts[2] <= 1.01 * first_fit  # the default window: within 1% of first-fit
    assert counts[-1] <= first_fit + 1


@pytest.mark.parametrize(
    ("lengths", "seq_len", "window", "expected"),
    [
        # Window 1, next fit: a document that does not fit closes the sample.
        ([3, 6, 5, 2], 8, 1, [[(0, 3)], [(1, 6)], [(2, 5), (3, 2)]]),
        # Window 2: 3 opens; of [6, 5] the 5 fits its 5 free; then 6 opens the next sample.
        ([3, 6, 5, 2], 8, 2, [[(0, 3), (2, 5)], [(1, 6), (3, 2)]]),
        # Equal lengths: the earliest; overlong truncated, empty documents never placed.
        ([1, 0, 3, 3, 12], 4, 4, [[(0, 1), (2, 3)], [(3, 3)], [(4, 4)]]),
        ([], 16, 4, []),
    ],
)
def test_golden_window(lengths, seq_len, window, expected):
    plan = WindowPacker(window=window).plan(np.asarray(lengths, np.int64), seq_len)
    assert _samples(plan) == expected


def test_golden_window_overlong():
    lengths = np.asarray([12, 3, 5], np.int64)
    # Pieces (0,0,5) (0,5,5) (0,10,2) (1,0,3) (2,0,5): the 2-token tail takes the 3 beside it.
    fragment = WindowPacker(overlong="fragment", window=2).plan(lengths, 5)
    assert _samples(fragment) == [[(0, 5)], [(0, 5)], [(0, 2), (1, 3)], [(2, 5)]]
    drop = WindowPacker(overlong="drop").plan(lengths, 5)
    assert _samples(drop) == [[(1, 3)], [(2, 5)]] and drop.dropped == 1


@pytest.mark.parametrize("window", [0, -1, 2.5, "8", True])
def test_window_must_be_a_positive_count(window):
    with pytest.raises(OptionError, match="the window packer's window must be a positive integer"):
        WindowPacker(window=window)


def test_window_needs_a_seq_len():
    with pytest.raises(DatasetError, match="pass seq_len"):
        WindowPacker().plan(np.asarray([3]), None)
    with pytest.raises(DatasetError, match="pass seq_len"):
        WindowPacker().online(None)


# --- names as users type them ----------------------------------------------------------------


def test_names_ignore_case_and_underscores_for_every_kind(gristmill_manager):
    assert gristmill_manager.get(PackerType, "First_Fit").name == "first-fit"
    assert gristmill_manager.get(PackerType, "GREEDY-stream").name == "greedy-stream"
    assert gristmill_manager.get(FieldMapperType, "prompt_completion").name == "prompt-completion"
    sampler = gristmill_manager.get(SamplerType, "Distributed_Length_Grouped")
    assert sampler.name == "distributed-length-grouped"
    exact = gristmill_manager.get(PackerType, "first-fit")
    assert gristmill_manager.get(PackerType, "first_fit") is exact  # the record itself


def test_a_number_ending_the_name_sets_the_declared_option(gristmill_manager):
    for spelled in ("window_16", "window-16", "Window_16"):
        record = gristmill_manager.get(PackerType, spelled)
        assert record.name == "window" and record.check_options(None) == {"window": 16}
        assert record.check_options({"window": 16}) == {"window": 16}  # said twice, alike
    with pytest.raises(
        OptionError, match=r"window-16 sets window=16, but the options give window=8"
    ):
        gristmill_manager.get(PackerType, "window_16").check_options({"window": 8})
    with pytest.raises(
        UnknownComponentError,
        match=r"no packer named 'first_fit_16': packer 'first-fit' takes no number after its name",
    ):
        gristmill_manager.get(PackerType, "first_fit_16")
    with pytest.raises(
        UnknownComponentError, match=r"no packer named 'windw'; available: .*window"
    ):
        gristmill_manager.get(PackerType, "windw")


class _BadNumber:
    @hookimpl
    def gristmill_packers(self):
        return [
            PackerType(
                name="tight",
                description="a packer whose number names an option it lacks",
                factory=WindowPacker,
                number_option="size",
            )
        ]


def test_a_number_option_must_be_declared(gristmill_register):
    with pytest.raises(PluginError, match="its number_option 'size' is not an option it declares"):
        gristmill_register(_BadNumber(), name="bad-number")


TEXTS = [{"text": f"doc{i} " * (i % 23 + 1)} for i in range(160)]


@pytest.fixture
def dataset(prepared_dataset, tmp_path) -> Path:
    """A copy of a small dataset (the plan cache writes into it), beside its data.jsonl."""
    prepared = prepared_dataset(TEXTS)
    shutil.copy(prepared.parent / "data.jsonl", tmp_path)
    return Path(shutil.copytree(prepared, tmp_path / "ds"))


def test_names_and_window_sizes_through_open_dataset_and_the_plan_cache(dataset):
    named = gristmill.open_dataset(dataset, seq_len=64, packer="window_1")
    explicit = gristmill.open_dataset(
        dataset, seq_len=64, packer="window", packer_options={"window": 1}
    )
    assert named.packer == explicit.packer == "window" and _same(named.plan, explicit.plan)
    assert len(list((dataset / PLANS_DIR).iterdir())) == 1  # one plan, stored once
    wide = gristmill.open_dataset(dataset, seq_len=64, packer="window")
    assert len(list((dataset / PLANS_DIR).iterdir())) == 2  # the window size is in the key
    lengths = wide.documents.lengths()
    assert _same(wide.plan, WindowPacker(window=DEFAULT_WINDOW).plan(lengths, 64))
    assert len(wide) < len(named)
    # Served in corpus order of their first document: each sample opens with the earliest left.
    firsts = wide.plan.seg_doc[wide.plan.sample_bounds[:-1]]
    assert (np.diff(firsts) > 0).all()
    same = gristmill.open_dataset(dataset, seq_len=64, packer="First_Fit")
    assert same.packer == "first-fit"
    gristmill.open_dataset(dataset, seq_len=64, packer="first-fit")
    assert len(list((dataset / PLANS_DIR).iterdir())) == 3  # first_fit shares first-fit's plan
    with pytest.raises(OptionError, match="window-1 sets window=1, but the options give window=8"):
        gristmill.open_dataset(dataset, seq_len=64, packer="window_1", packer_options={"window": 8})


def test_names_through_stream(dataset):
    source = dataset.parent / "data.jsonl"
    served = [
        s["input_ids"].tolist()
        for s in gristmill.stream(str(source), tokenizer="byte", seq_len=64, packer="Window_4")
    ]
    prepared = gristmill.open_dataset(
        dataset, seq_len=64, packer="window", packer_options={"window": 4}
    )
    assert served == [s["input_ids"].tolist() for s in prepared]
    with pytest.raises(OptionError, match="window-4 sets window=4"):
        gristmill.stream(str(source), seq_len=64, packer="window_4", packer_options={"window": 2})
    with pytest.raises(gristmill.errors.DataError, match="cannot pack a stream"):
        gristmill.stream(str(source), seq_len=64, packer="first_fit")


def test_names_through_config_files(dataset, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'[dataset]\npath = "{dataset}"\nseq_len = 64\npacker = "window_4"\n')
    data = from_config(config).data()
    assert data.packer == "window" and data.packer_options == {"window": 4}
    config.write_text(
        f'[dataset]\npath = "{dataset}"\nseq_len = 64\npacker = "window_4"\n'
        "packer_options = {window = 8}\n"
    )
    with pytest.raises(ConfigError, match=r"dataset\.packer_options: .*window-4 sets window=4"):
        from_config(config)


def test_names_through_the_command_line(tmp_path):
    source = tmp_path / "qa.jsonl"
    source.write_text('{"question": "a b", "answer": "c"}\n{"question": "d", "answer": "e f"}\n')
    result = run_gristmill(
        "prepare",
        str(source),
        "-o",
        str(tmp_path / "ds"),
        "--format",
        "Prompt_Completion",
        "--fields",
        "prompt=question,completion=answer",
        "--executor",
        "LOCAL",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "format prompt-completion (as asked)" in result.stdout + result.stderr
    bad = run_gristmill("prepare", str(source), "-o", str(tmp_path / "x"), "--executor", "rayy")
    assert bad.returncode == 2 and "no executor named 'rayy'; available: local" in bad.stderr
