"""What each kind of collated batch holds (torch alone, no model): the keys of every layout and
mask, the masks against their definition (same document, earlier key; a padding token sees
itself), the BlockMask against torch's own ``create_block_mask``, no dense mask where none is
asked for, and the deprecated keywords."""

from __future__ import annotations

import itertools
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from tests.helpers import examples

torch = pytest.importorskip("torch")

from gristmill.torch import Collator  # noqa: E402
from gristmill.torch.masks import document_ids, flex_mask_to  # noqa: E402

flex = pytest.importorskip("torch.nn.attention.flex_attention")

# flex_attention runs uncompiled here (torch's CPU kernel is not what is tested), and says so.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

NO_MASK_KEYS = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "use_cache"}
ROWS = ("input_ids", "labels", "position_ids")


def _samples(segment_lists):
    """Samples of the given segment lengths: ids 1, 2, … across the sample, positions
    restarting at every segment, labels -100 at each segment's first token."""
    samples = []
    for lens in segment_lists:
        n = sum(lens)
        starts = np.cumsum([0, *lens[:-1]]).astype(np.int64)
        labels = np.arange(1, n + 1)
        labels[starts[np.asarray(lens) > 0]] = -100
        samples.append(
            {
                "input_ids": np.arange(1, n + 1),
                "labels": labels,
                "position_ids": np.arange(n) - np.repeat(starts, lens),
                "seq_lens": np.asarray(lens),
            }
        )
    return samples


def _expected(rows, width):
    """``(len(rows), width, width)`` bool: the definition, row by row (``rows``: each row's
    segment lengths; the rest of the row is padding, each padding token its own)."""
    i, j = np.indices((width, width))
    out = []
    for lens in rows:
        n = sum(lens)
        segment = np.concatenate([np.repeat(np.arange(len(lens)), lens), -1 - np.arange(width - n)])
        out.append((segment[i] == segment[j]) & (j <= i))
    return torch.from_numpy(np.stack(out))


segment_lists = st.lists(
    st.lists(st.integers(0, 9), min_size=1, max_size=4).filter(lambda x: sum(x) > 0),
    min_size=1,
    max_size=4,
)


# Each example builds the masks of a batch and compares them element by element.
@settings(max_examples=examples(0.6))
@given(segment_lists, st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_the_dense_masks_are_exactly_their_definition(lists, dtype):
    samples = _samples(lists)
    width = max(sum(lens) for lens in lists)
    expected = _expected(lists, width)
    seen = Collator(padding_free=False, mask="bool")(samples)["attention_mask"]
    assert seen.dtype == torch.bool and seen.shape == (len(lists), 1, width, width)
    assert torch.equal(seen[:, 0], expected)
    additive = Collator(padding_free=False, mask="additive", dtype=dtype)(samples)
    mask = additive["attention_mask"]
    assert mask.dtype == dtype and mask.shape == seen.shape
    wanted = torch.where(expected, 0.0, torch.finfo(dtype).min).to(dtype)
    assert torch.equal(mask[:, 0], wanted)
    two_d = Collator(padding_free=False, mask="padding")(samples)["attention_mask"]
    lengths = [sum(lens) for lens in lists]
    assert two_d.tolist() == [[int(k < n) for k in range(width)] for n in lengths]


def _same_blocks(ours, theirs):
    """The two BlockMasks list the same key blocks, partial and whole, for every query block."""
    for counts, indices in (
        ("kv_num_blocks", "kv_indices"),
        ("full_kv_num_blocks", "full_kv_indices"),
    ):
        a_n, b_n = getattr(ours, counts), getattr(theirs, counts)
        assert torch.equal(a_n, b_n), counts
        a_i, b_i = getattr(ours, indices), getattr(theirs, indices)
        for row, head, block in itertools.product(*map(range, a_n.shape)):
            n = int(a_n[row, head, block])
            assert sorted(a_i[row, head, block, :n].tolist()) == sorted(
                b_i[row, head, block, :n].tolist()
            )


# Each example builds a BlockMask twice, one of them from its dense mask.
@settings(max_examples=examples(0.2))
@given(
    st.lists(st.lists(st.integers(0, 200), min_size=1, max_size=4), min_size=1, max_size=3),
    st.booleans(),
)
def test_the_block_mask_is_torchs_own_for_the_same_mask(lists, padding_free):
    """Built from block-level document ranges, it lists exactly the blocks that torch's
    ``create_block_mask`` finds in the dense mask, and its mask_mod is the definition."""
    lists = [lens if sum(lens) else [*lens, 1] for lens in lists]
    rows = [[x for lens in lists for x in lens]] if padding_free else lists
    width = max(sum(lens) for lens in rows)
    mask = Collator(padding_free=padding_free, mask="flex")(_samples(lists))["attention_mask"]
    assert isinstance(mask, flex.BlockMask) and mask.seq_lengths == (width, width)
    dense = flex.create_mask(mask.mask_mod, len(rows), 1, width, width, device="cpu")
    assert torch.equal(dense[:, 0], _expected(rows, width))
    theirs = flex.create_block_mask(mask.mask_mod, len(rows), 1, width, width, device="cpu")
    _same_blocks(mask, theirs)


@pytest.mark.parametrize("padding_free", [True, False])
def test_the_block_mask_gives_the_attention_of_each_document(padding_free):
    """flex_attention with the mask: each document's causal attention on its own. A long
    document holds whole blocks, which flex takes without its mask_mod."""
    lists = [[130, 5, 400], [3, 260]]
    rows = [[x for lens in lists for x in lens]] if padding_free else lists
    width = max(sum(lens) for lens in rows)
    mask = Collator(padding_free=padding_free, mask="flex")(_samples(lists))["attention_mask"]
    assert int(mask.full_kv_num_blocks.sum()) >= 1
    theirs = flex.create_block_mask(mask.mask_mod, len(rows), 1, width, width, device="cpu")
    _same_blocks(mask, theirs)
    torch.manual_seed(0)
    q, k, v = (torch.randn(len(rows), 2, width, 8) for _ in range(3))
    out = flex.flex_attention(q, k, v, block_mask=mask)
    for row, lens in enumerate(rows):
        for a, b in itertools.pairwise(np.cumsum([0, *lens]).tolist()):
            one = torch.nn.functional.scaled_dot_product_attention(
                *(x[row : row + 1, :, a:b] for x in (q, k, v)), is_causal=True
            )
            assert torch.allclose(out[row : row + 1, :, a:b], one, atol=1e-5)


def test_the_block_mask_travels():
    """It pickles (a DataLoader worker hands it over), and moves with its document ids."""
    mask = Collator(mask="flex")(_samples([[3, 4], [5]]))["attention_mask"]
    back = pickle.loads(pickle.dumps(mask))
    assert torch.equal(back.kv_indices, mask.kv_indices)
    assert torch.equal(back.mask_mod.args[0], mask.mask_mod.args[0])
    moved = flex_mask_to(mask, "meta")
    assert moved.kv_indices.device.type == moved.mask_mod.args[0].device.type == "meta"
    assert mask.mask_mod.args[0].device.type == "cpu"


@pytest.mark.parametrize("padding_free", [True, False])
def test_a_batch_without_a_mask_holds_the_boundaries_and_turns_the_cache_off(padding_free):
    lists = [[3, 4], [5], [2, 1, 1]]
    batch = Collator(padding_free=padding_free)(_samples(lists))
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert batch["cu_seq_lens_q"] is batch["cu_seq_lens_k"]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    if padding_free:
        want = [3, 4, 5, 2, 1, 1]
        assert batch["input_ids"].shape == (1, 16)
        assert batch["cu_seq_lens_q"] is batch["cu_seqlens"]
        assert batch["max_seqlen"] == 5
    else:  # rows end to end, each row's padding one more sequence
        want = [3, 4, 5, 2, 2, 1, 1, 3]
        assert batch["input_ids"].shape == (3, 7) and "cu_seqlens" not in batch
    assert batch["cu_seq_lens_q"].tolist() == np.cumsum([0, *want]).tolist()
    assert batch["max_length_q"] == batch["max_length_k"] == max(want)
    assert batch["seq_lens"].tolist() == [3, 4, 5, 2, 1, 1]


@settings(max_examples=examples(0.6))
@given(segment_lists, st.booleans())
def test_batches_follow_the_segments_of_their_samples(lists, padding_free):
    samples = _samples(lists)
    batch = Collator(padding_free=padding_free)(samples)
    all_lens = [x for lens in lists for x in lens]
    assert batch["seq_lens"].tolist() == all_lens
    if padding_free:
        for key in ROWS:
            assert batch[key].tolist() == [np.concatenate([s[key] for s in samples]).tolist()]
        cu = batch["cu_seqlens"].tolist()
        assert cu == np.cumsum([0, *all_lens]).tolist()
        assert batch["max_seqlen"] == max(all_lens)
    else:
        width = max(sum(lens) for lens in lists)
        for k, sample in enumerate(samples):
            n = len(sample["input_ids"])
            for key, pad in zip(ROWS, (0, -100, 0)):
                assert batch[key][k, :n].tolist() == sample[key].tolist()
                assert (batch[key][k, n:] == pad).all()
        assert batch["cu_seq_lens_q"][-1] == len(lists) * width


@pytest.mark.parametrize("padding_free", [True, False])
def test_no_dense_mask_unless_asked_for(padding_free):
    """Neither the default batch nor a BlockMask holds anything of tokens x tokens."""
    lists = [[300, 200], [500], [100, 100, 100]]
    tokens = sum(map(sum, lists))
    for options in ({}, {"mask": "flex"}):
        batch = Collator(padding_free=padding_free, **options)(_samples(lists))
        found = [v for v in batch.values() if torch.is_tensor(v)]
        if "attention_mask" in batch:
            mask = batch["attention_mask"]
            found += [getattr(mask, a) for a in mask._TENSOR_ATTRS if getattr(mask, a) is not None]
        # A dense mask would hold tokens² values (rows x width² padded); rows and block
        # tables hold a few per token.
        assert max(t.numel() for t in found) <= 3 * tokens


def test_dense_masks_and_padding_free_rows_do_not_mix():
    for mask in ("bool", "additive"):
        with pytest.raises(gristmill.GristmillError, match="never holds a dense mask"):
            Collator(padding_free=True, mask=mask)
    with pytest.raises(gristmill.GristmillError, match="has no padding"):
        Collator(padding_free=True, mask="padding")
    with pytest.raises(gristmill.GristmillError, match="expected None or one of"):
        Collator(mask="float")
    with pytest.raises(gristmill.GristmillError, match="dtype of the additive mask"):
        Collator(padding_free=False, dtype=torch.bfloat16)


def test_the_deprecated_keywords_say_what_they_are_now():
    samples = _samples([[3, 4], [5]])
    cases = [
        ({"padding_free": True, "block_mask": False}, {"padding_free": True}),
        ({"block_mask": False}, {"mask": "padding"}),
        ({"block_mask": True}, {"mask": "additive"}),
        ({"hf_names": True}, {}),
        ({"padding_free": True, "block_mask": False, "hf_names": True}, {"padding_free": True}),
    ]
    for old, new in cases:
        with pytest.warns(DeprecationWarning, match="deprecated"):
            collate = Collator(**old)
        got, want = collate(samples), Collator(**new)(samples)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(got[key], value) if torch.is_tensor(value) else got[key] == value
    with pytest.raises(gristmill.GristmillError, match="padding_free=False, mask='additive'"):
        Collator(padding_free=True, block_mask=True)
    with pytest.raises(gristmill.GristmillError, match="pass mask= alone"):
        Collator(block_mask=False, mask="flex")
    for options in ({"hf_names": False}, {"hf_names": True, "mask": "flex"}):
        with pytest.raises(gristmill.GristmillError, match="hf_names is deprecated"):
            Collator(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current keywords warn of nothing
        Collator(padding_free=False, mask="additive", dtype=torch.float16)


def test_seq_lens_must_add_up_to_the_tokens():
    sample = {
        "input_ids": np.arange(5),
        "labels": np.arange(5),
        "position_ids": np.arange(5),
        "seq_lens": np.array([2, 2]),
    }
    for options in ({}, {"padding_free": False}, {"padding_free": False, "mask": "bool"}):
        with pytest.raises(gristmill.errors.GristmillError, match="5 tokens but seq_lens"):
            Collator(**options)([sample])
    with pytest.raises(gristmill.errors.GristmillError, match="1 of the batch has 5 tokens"):
        document_ids([np.array([3]), np.array([2, 2])], [3, 5], 5)
    with pytest.raises(ValueError, match="empty batch"):
        Collator()([])


@pytest.fixture(scope="module")
def dataset(prepared_dataset):
    rng = np.random.default_rng(1)
    records = [
        {"text": " ".join(f"w{int(x)}" for x in rng.integers(0, 50, int(rng.integers(2, 40))))}
        for _ in range(60)
    ]
    return gristmill.open_dataset(prepared_dataset(records), seq_len=64, packer="first-fit")


@pytest.mark.parametrize(
    "options",
    [
        {"mask": "flex"},
        {"padding_free": False, "mask": "flex"},
        {"padding_free": False, "mask": "bool"},
        {"padding_free": False, "mask": "additive"},
        {"padding_free": False},
    ],
)
def test_a_datasets_batches_collate_as_their_samples_do(dataset, options):
    """``Collator.batches`` (what the loader calls, several steps at once) against the samples
    one by one, for the masks that tests/serve/test_batched_fetch.py does not cover."""
    collate = Collator(**options)
    whole = dataset.batch(list(range(12))).with_repeats([2, 7])
    for got, piece in zip(collate.batches(whole, [5, 7]), whole.split([5, 7])):
        want = collate([dict(sample) for sample in piece])
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, flex.BlockMask):
                _same_blocks(got[key], value)
                assert torch.equal(got[key].mask_mod.args[0], value.mask_mod.args[0])
            elif torch.is_tensor(value):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key
