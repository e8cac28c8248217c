"""Streams through torch: the same batches whatever the workers, resume once and twice, the
deal of pieces to ranks, StreamDataset's cover, refusals. Real ranks: test_distributed.py."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import GristmillError
from tests.helpers import examples

torch = pytest.importorskip("torch")
import gristmill.torch  # noqa: E402
from gristmill.torch.streaming import deal, redeal  # noqa: E402

# Small chunks and pieces, so that a few kilobytes make many of each.
CUT = {"chunk_bytes": 1500, "piece_bytes": 4000}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream-loader")
    rng = np.random.default_rng(3)
    paths = []
    for name, count in (("a.jsonl", 300), ("b.jsonl", 90)):
        path = folder / name
        path.write_text(
            "".join(
                json.dumps({"text": f"{name} {i} " + "w" * int(rng.integers(1, 120))}) + "\n"
                for i in range(count)
            )
        )
        paths.append(path)
    return paths


def _stream(sources, **options):
    return gristmill.stream(sources, **{"seq_len": 128, **CUT, **options})


def _keys(samples):
    """A batch as its samples' identities (every document here is different)."""
    return [(bytes(s["input_ids"].astype(np.int64)), bool(s.get("repeat", False))) for s in samples]


def _loader(stream, **options):
    return gristmill.torch.dataloader(stream, batch_size=5, collate_fn=_keys, **options)


def test_the_stream_is_cut_into_pieces_of_chunks(sources):
    stream = _stream(sources)
    assert len(stream.pieces) > 8 and all(len(piece) >= 1 for piece in stream.pieces)
    # Each piece packed on its own: iterating the stream is packing piece after piece.
    stats = gristmill.stream(sources, seq_len=128, **CUT).stats
    by_piece = [s for p in range(len(stream.pieces)) for s in stream.samples([p], stats)]
    assert _keys(by_piece) == _keys(list(stream))


def test_one_rank_serves_the_stream_in_order_whatever_the_workers(sources):
    stream = _stream(sources)
    everything = _keys(list(stream))
    for workers in (0, 1, 2, 3, 4):
        loader = _loader(stream, shuffle=False, num_workers=workers)
        batches = list(loader)
        assert [key for batch in batches for key in batch] == everything
        assert all(len(b) == 5 for b in batches[:-1]) and loader.epoch == 1
        assert loader.stats.samples == len(everything)


def test_shuffled_epochs_differ_and_repeat_with_the_seed(sources):
    stream = _stream(sources)
    by_workers = [list(_loader(stream, seed=4, num_workers=w)) for w in (0, 2)]
    assert by_workers[0] == by_workers[1]
    loader = _loader(stream, seed=4)
    first, second = list(loader), list(loader)
    assert first == by_workers[0] and first != second
    assert Counter(k for b in first for k in b) == Counter(k for b in second for k in b)


# Each example streams the epoch three times, with worker processes: an eighth of the
# profile's examples.
@settings(max_examples=examples(0.12))
@given(
    cuts=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=2),
    workers=st.lists(st.integers(0, 2), min_size=3, max_size=3),
)
def test_resume_once_and_twice_serves_the_uninterrupted_epoch(sources, cuts, workers):
    stream = _stream(sources)
    whole = list(_loader(stream, seed=1))
    loader, served = _loader(stream, seed=1, num_workers=workers[0]), []
    for cut, w in zip(sorted(cuts), workers[1:]):  # checkpoints within the epoch
        served += list(islice(iter(loader), int(cut * len(whole)) - len(served)))
        state = json.loads(json.dumps(loader.state_dict()))
        loader = _loader(stream, seed=1, num_workers=w)
        loader.load_state_dict(state)
    served += list(loader)
    assert served == whole


def test_a_broken_off_pass_continues_where_it_stopped(sources):
    stream = _stream(sources)
    whole = list(_loader(stream))
    loader = _loader(stream)
    head = list(islice(iter(loader), 7))
    assert head + list(loader) == whole and loader.epoch == 1


def test_drop_last_serves_only_full_batches(sources):
    stream = _stream(sources)
    everything = len(list(stream))
    batches = list(_loader(stream, drop_last=True))
    assert all(len(b) == 5 for b in batches) and len(batches) == everything // 5


def test_a_state_from_another_stream_or_seed_is_refused(sources, tmp_path):
    loader = _loader(_stream(sources), seed=1)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(GristmillError, match="seed: 1 in the state, 2 here"):
        _loader(_stream(sources), seed=2).load_state_dict(state)
    with pytest.raises(GristmillError, match="the stream"):
        _loader(_stream(sources, seq_len=64), seed=1).load_state_dict(state)
    with pytest.raises(GristmillError, match="not a gristmill-stream-loader state"):
        _loader(_stream(sources)).load_state_dict({"format": "gristmill-loader", "version": 1})


def test_what_a_stream_loader_refuses(sources):
    stream = _stream(sources)
    with pytest.raises(GristmillError, match="takes no sampler"):
        gristmill.torch.dataloader(stream, batch_size=2, sampler="random")
    with pytest.raises(GristmillError, match="persistent_workers"):
        gristmill.torch.dataloader(stream, batch_size=2, num_workers=1, persistent_workers=True)
    with pytest.raises(GristmillError, match="init_process_group"):
        gristmill.torch.dataloader(stream, batch_size=2, rank=0, world_size=2)
    with pytest.raises(GristmillError, match="batch_size"):
        gristmill.torch.dataloader(stream, batch_size=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_loader_rebuilt_from_its_parts_is_refused(sources, workers):
    loader = _loader(_stream(sources), shuffle=False, num_workers=workers)
    rebuilt = torch.utils.data.DataLoader(loader.dataset, batch_size=None, num_workers=workers)
    with pytest.raises(GristmillError, match="iterate it as it is"):
        next(iter(rebuilt))  # before the loader's first pass
    first = next(iter(loader))
    with pytest.raises(GristmillError, match="iterate it as it is"):
        next(iter(rebuilt))  # and after it: the pass took its pieces
    assert next(iter(loader)) != first and loader.step == 2  # its own passes go on


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_stream_dataset_shares_every_sample_once_across_ranks_and_workers(sources, world, workers):
    stream = _stream(sources)
    served = []
    for rank in range(world):
        dataset = gristmill.torch.StreamDataset(stream, rank=rank, world_size=world, shuffle=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, collate_fn=lambda s: s
        )
        served += _keys(list(loader))
    assert Counter(served) == Counter(_keys(list(stream)))


@given(
    pieces=st.integers(0, 60),
    worlds=st.lists(st.integers(1, 16), min_size=2, max_size=3),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
    shuffle=st.booleans(),
    served=st.data(),
)
def test_pieces_are_dealt_and_dealt_again_exactly_once(
    pieces, worlds, seed, epoch, shuffle, served
):
    work = deal(pieces, worlds[0], seed=seed, epoch=epoch, shuffle=shuffle)
    assert sorted(p for w in work for p, _ in w) == list(range(pieces))
    assert max(map(len, work)) - min(map(len, work)) <= 1  # shares differ by a piece at most
    for world in worlds[1:]:
        # Some of every rank's pieces served, then the rest dealt to another number of ranks.
        rest = [w[served.draw(st.integers(0, len(w))) :] for w in work]
        again = redeal(rest, world)
        assert len(again) == world
        assert sorted(map(tuple, (e for w in again for e in w))) == sorted(
            map(tuple, (e for w in rest for e in w))
        )
        work = again


def test_a_stream_pickles_for_spawned_workers(sources):
    import pickle

    stream = _stream(sources)
    copy = pickle.loads(pickle.dumps(stream))
    assert len(copy.pieces) == len(stream.pieces) and copy.identity == stream.identity
    assert _keys(list(copy)) == _keys(list(stream))


def test_a_loader_counts_a_source_refused_by_the_schema_check_once(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    for name, header in (("a", "text"), ("b", "text,extra"), ("c", "text")):
        rows = "".join(f"{name} row {i}{',x' if name == 'b' else ''}\n" for i in range(200))
        (folder / f"{name}.csv").write_text(f"{header}\n{rows}")
    stream = _stream(sorted(folder.iterdir()), on_error="skip")
    everything = _keys(list(stream))
    assert stream.stats.skipped == {"schema-drift": 1}
    for workers in (0, 2):
        loader = _loader(stream, shuffle=False, num_workers=workers)
        assert [key for batch in loader for key in batch] == everything
        assert loader.stats.skipped == {"schema-drift": 1}


def test_len_of_a_stream_loader_says_a_stream_has_none_and_what_to_do(sources):
    loader = _loader(_stream(sources), shuffle=False)
    with pytest.raises(TypeError, match=r"a stream has no length.*max_steps=N.*open_dataset"):
        len(loader)
    # A TypeError, as for anything without a length: list() and trainers' checks take it so.
    assert [key for batch in loader for key in batch] == _keys(list(_stream(sources)))
