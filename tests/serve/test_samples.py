"""The sample contract, for any segments: positions, labels, masks and seq_lens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gristmill.options import LABELS
from gristmill.serve.samples import (
    IGNORE_INDEX,
    Buffers,
    build_sample,
    build_samples,
    count_up,
    join_parts,
)

SEGMENT = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 70000), min_size=n, max_size=n),
        st.one_of(st.none(), st.lists(st.integers(0, 1), min_size=n, max_size=n)),
    )
)


@given(segments=st.lists(SEGMENT, min_size=1, max_size=8), restart=st.booleans())
def test_segments_become_one_sample_exactly(segments, restart):
    parts = [
        (np.asarray(ids, np.uint32), None if mask is None else np.asarray(mask, np.uint8))
        for ids, mask in segments
    ]
    sample = build_sample(parts, restart=restart)
    ids = np.concatenate([p[0] for p in parts]).astype(np.int64)
    mask = np.concatenate(
        [np.ones(len(i), bool) if m is None else m.astype(bool) for i, m in parts]
    )
    lens = [len(p[0]) for p in parts] if restart else [len(ids)]
    starts = np.cumsum([0, *lens[:-1]])
    assert np.array_equal(sample["input_ids"], ids)
    assert sample["seq_lens"].tolist() == lens and sample["seq_lens"].sum() == len(ids)
    assert np.array_equal(sample["position_ids"], np.concatenate([np.arange(n) for n in lens]))
    # The loss mask bit for bit, except the first token of every sequence: no label crosses.
    expected = np.where(mask, ids, IGNORE_INDEX)
    expected[starts] = IGNORE_INDEX
    assert np.array_equal(sample["labels"], expected)
    assert all(v.dtype == np.int64 for v in sample.values())
    # Shifted: position j of the input is paired with token j + 1 of the same sequence.
    shifted = build_sample(parts, restart=restart, labels="shifted")
    assert np.array_equal(shifted["input_ids"], ids[:-1])
    assert np.array_equal(shifted["labels"], expected[1:])
    assert np.array_equal(shifted["position_ids"], sample["position_ids"][:-1])
    assert shifted["seq_lens"].sum() == len(ids) - 1 and (shifted["seq_lens"] > 0).all()


def _batch_of(samples, **options):
    """Drawn samples (lists of (ids, mask) segments) as arrays, and built as one batch."""
    parts = [
        [
            (np.asarray(ids, np.uint32), None if mask is None else np.asarray(mask, np.uint8))
            for ids, mask in segments
        ]
        for segments in samples
    ]
    tokens, mask, lengths = join_parts([part for sample in parts for part in sample])
    return parts, build_samples(tokens, mask, lengths, [len(p) for p in parts], **options)


@given(
    samples=st.lists(
        st.lists(SEGMENT | st.just(([], None)), min_size=1, max_size=5), min_size=1, max_size=6
    ),
    restart=st.booleans(),
    labels=st.sampled_from(LABELS),
)
def test_a_batch_builds_the_samples_one_by_one_would(samples, restart, labels):
    # Empty segments too (no packer plans them, but nothing here may depend on it).
    parts, batch = _batch_of(samples, restart=restart, labels=labels)
    assert len(batch) == len(parts)
    for got, sample in zip(batch, parts):
        want = build_sample(sample, restart=restart, labels=labels)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == np.int64 and np.array_equal(got[key], want[key]), key


@given(
    samples=st.lists(st.lists(SEGMENT, min_size=1, max_size=4), min_size=1, max_size=8),
    labels=st.sampled_from(LABELS),
    data=st.data(),
)
def test_a_batch_splits_and_marks_repeats_sample_by_sample(samples, labels, data):
    _, batch = _batch_of(samples, labels=labels)
    whole = [{key: value.copy() for key, value in sample.items()} for sample in batch]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(batch)), max_size=3)))
    sizes = np.diff([0, *cuts, len(batch)]).tolist()
    repeats = data.draw(st.sets(st.integers(0, len(batch) - 1)))
    pieces = batch.with_repeats(repeats).split(sizes)
    got = [sample for piece in pieces for sample in piece]
    assert [len(p) for p in pieces] == sizes and len(got) == len(whole)
    for k, (sample, want) in enumerate(zip(got, whole)):
        assert sample.pop("repeat", False) == (k in repeats)
        for key, value in want.items():
            expected = (
                np.full_like(value, IGNORE_INDEX) if key == "labels" and k in repeats else value
            )
            assert np.array_equal(sample[key], expected), key
    # Each piece's arrays are its samples' values concatenated.
    start = 0
    for piece, size in zip(pieces, sizes):
        for key in ("input_ids", "labels", "position_ids", "seq_lens"):
            array = getattr(piece, key)
            parts_of = [s[key] for s in got[start : start + size]]
            joined = np.concatenate(parts_of) if parts_of else np.zeros(0, np.int64)
            assert np.array_equal(array, joined), key
        assert piece.lengths() == [len(s["input_ids"]) for s in got[start : start + size]]
        start += size
    for sample, want in zip(batch, whole):  # marking copied the batch: this one is unchanged
        assert "repeat" not in sample and np.array_equal(sample["labels"], want["labels"])
    with pytest.raises(ValueError, match="add up to"):
        batch.split([len(batch) + 1])


def test_a_buffer_is_handed_out_again_only_when_nothing_uses_it():
    buffers = Buffers(keep=2)
    first = buffers.take(100)
    address = first.__array_interface__["data"][0]
    second = buffers.take(100)  # the first is in use: another buffer
    assert not np.shares_memory(first, second)
    held = first[10:20]  # a view (or a tensor over one) keeps the buffer in use
    del first
    assert not np.shares_memory(buffers.take(100), held)
    del held, second
    again = buffers.take(120)  # free again, and large enough: the same memory
    assert again.__array_interface__["data"][0] == address and len(again) >= 120
    bigger = buffers.take(10_000)  # too small ones are replaced, not overrun
    assert len(bigger) >= 10_000 and len(buffers.pool) == 2


def test_a_batch_hands_the_memory_it_has_to_spare_out_once():
    tokens = np.arange(40, dtype=np.uint32)
    batch = build_samples(tokens, None, np.array([10, 30]), [1, 1], buffers=Buffers())
    spare = batch.spare()
    assert spare is not None and len(spare) and spare.base is batch.rows.base
    assert not any(np.shares_memory(spare, array) for array in (batch.rows, batch.seq_lens))
    assert batch.spare() is None and all(part.spare() is None for part in batch.split([1, 1]))


@given(lengths=st.lists(st.integers(0, 12_000), max_size=6))
def test_positions_count_up_from_zero_in_every_sequence_also_past_the_kept_counting(lengths):
    positions = np.full(sum(lengths), -1, np.int64)
    count_up(positions, lengths)
    expected = [np.arange(n) for n in lengths]
    assert np.array_equal(positions, np.concatenate(expected) if lengths else positions)
