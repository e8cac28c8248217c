"""The torch collator with a real (tiny, randomly initialised) transformers causal LM: a packed
batch gives exactly the per-document losses, and padding-free gives the padded batch's logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from tests.helpers import examples

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gristmill.torch import Collator  # noqa: E402


@pytest.fixture(scope="module")
def packed(prepared_dataset):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        words = " ".join(f"w{int(x)}" for x in rng.integers(0, 50, int(rng.integers(2, 12))))
        if i % 2:
            lines.append({"prompt": f"Q{i}: {words}?", "completion": f" A{i}."})
        else:
            lines.append({"text": words})
    files = {name: [x for x in lines if name in x] for name in ("prompt", "text")}
    return gristmill.open_dataset(prepared_dataset(files), seq_len=96, packer="first-fit")


def _model(attention: str, vocab_size: int = 260):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM._from_config(
        config, attn_implementation=attention, torch_dtype=torch.float32
    ).eval()


def _documents(samples):
    """Each sample's document segments as their own (input_ids, labels) rows."""
    for sample in samples:
        start = 0
        for length in sample["seq_lens"]:
            yield (
                torch.as_tensor(sample["input_ids"][start : start + length])[None],
                torch.as_tensor(sample["labels"][start : start + length])[None],
            )
            start += length


def _inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_packed_batch_has_the_loss_of_its_documents(packed, attention):
    model = _model(attention)
    samples = [packed[i] for i in range(4)]
    assert sum(len(s["seq_lens"]) for s in samples) >= 8  # really packed: two or more each
    batch = Collator()(samples)
    with torch.no_grad():
        loss = model(**_inputs(batch), labels=batch["labels"]).loss
        total, count = 0.0, 0
        for ids, labels in _documents(samples):
            targets = int((labels[0, 1:] != -100).sum())
            if targets:
                total += model(input_ids=ids, labels=labels).loss.item() * targets
                count += targets
    assert abs(loss.item() - total / count) < 1e-5
    # The plain 2-D mask lets documents see each other: a different loss, which is the point.
    plain = Collator(block_mask=False)(samples)
    with torch.no_grad():
        leaky = model(**_inputs(plain), labels=plain["labels"]).loss
    assert abs(leaky.item() - total / count) > 1e-4


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_padding_free_gives_the_padded_logits(packed, attention):
    model = _model(attention)
    samples = [packed[i] for i in range(3)]
    padded = Collator()(samples)
    flat = Collator(padding_free=True)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert flat["input_ids"].shape == (1, sum(lengths))
    cu = flat["cu_seqlens"]
    assert cu[0] == 0 and cu[-1] == sum(lengths) and bool((cu[1:] > cu[:-1]).all())
    assert flat["max_seqlen"] == int(flat["seq_lens"].max())
    with torch.no_grad():
        rows = model(**_inputs(padded)).logits
        one = model(**_inputs(flat)).logits[0]
    expected = torch.cat([rows[i, :n] for i, n in enumerate(lengths)])
    assert torch.allclose(one, expected, atol=1e-5)
    # Padding positions get finite values (they see themselves), never NaN.
    assert torch.isfinite(rows).all()


def test_collated_fields(packed):
    samples = [packed[0], packed[1]]
    batch = Collator(pad_id=7)(samples)
    width = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["attention_mask"].shape == (2, 1, width, width)
    short = int(np.argmin([len(s["input_ids"]) for s in samples]))
    n = len(samples[short]["input_ids"])
    if n < width:
        assert (batch["input_ids"][short, n:] == 7).all()
        assert (batch["labels"][short, n:] == -100).all()
    two_d = Collator(block_mask=False)(samples)["attention_mask"]
    assert two_d.shape == (2, width) and int(two_d.sum()) == sum(
        len(s["input_ids"]) for s in samples
    )
    with pytest.raises(ValueError, match="empty batch"):
        Collator()([])


# Each example builds torch tensors for a whole batch.
@settings(max_examples=examples(0.6))
@given(
    st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=4), min_size=1, max_size=4),
    st.booleans(),
)
def test_batches_follow_the_segments_of_their_samples(segment_lists, padding_free):
    samples = []
    for lens in segment_lists:
        n = sum(lens)
        starts = np.cumsum([0, *lens[:-1]])
        samples.append(
            {
                "input_ids": np.arange(1, n + 1),
                "labels": np.arange(1, n + 1),
                "position_ids": np.arange(n) - np.repeat(starts, lens),
                "seq_lens": np.asarray(lens),
            }
        )
    batch = Collator(padding_free=padding_free)(samples)
    all_lens = [x for lens in segment_lists for x in lens]
    assert batch["seq_lens"].tolist() == all_lens
    if padding_free:
        cu = batch["cu_seqlens"].tolist()
        assert (
            cu[0] == 0 and cu[-1] == sum(all_lens) and all(a < b for a, b in itertools.pairwise(cu))
        )
        assert batch["max_seqlen"] == max(all_lens)
        rows = [np.concatenate([s["input_ids"] for s in samples])]
        widths = [sum(all_lens)]
        segment_rows = [np.repeat(np.arange(len(all_lens)), all_lens)]
    else:
        rows = [s["input_ids"] for s in samples]
        widths = [len(r) for r in rows]
        segment_rows = [np.repeat(np.arange(len(s["seq_lens"])), s["seq_lens"]) for s in samples]
    mask = batch["attention_mask"][:, 0]
    for row, (ids, width, segments) in enumerate(zip(rows, widths, segment_rows)):
        assert batch["input_ids"][row, :width].tolist() == ids.tolist()
        seen = (mask[row, :width, :width] == 0).numpy()
        i, j = np.indices((width, width))
        assert np.array_equal(seen, (segments[i] == segments[j]) & (j <= i))


# Each example builds a torch attention mask and compares it element by element.
@settings(max_examples=examples(0.6))
@given(
    st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4), min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_the_block_mask_is_exactly_its_definition(segment_lists, padding_free, dtype):
    # Zero-length segments too, and padding: a padding query sees only itself.
    samples = [
        {
            "input_ids": np.ones(sum(lens), np.int64),
            "labels": np.ones(sum(lens), np.int64),
            "position_ids": np.zeros(sum(lens), np.int64),
            "seq_lens": np.asarray(lens),
        }
        for lens in segment_lists
    ]
    mask = Collator(padding_free=padding_free, dtype=dtype)(samples)["attention_mask"]
    rows = [[x for lens in segment_lists for x in lens]] if padding_free else segment_lists
    width = max(sum(lens) for lens in rows)
    assert mask.shape == (len(rows), 1, width, width) and mask.dtype == dtype
    i, j = np.indices((width, width))
    for row, lens in enumerate(rows):
        n = sum(lens)
        segment = np.concatenate([np.repeat(np.arange(len(lens)), lens), -1 - np.arange(width - n)])
        seen = (segment[i] == segment[j]) & (j <= i)
        expected = torch.where(torch.from_numpy(seen), 0.0, torch.finfo(dtype).min).to(dtype)
        assert torch.equal(mask[row, 0], expected)
    two_d = Collator(block_mask=False)(samples)["attention_mask"]
    lengths = [sum(lens) for lens in segment_lists]
    assert two_d.tolist() == [[int(k < n) for k in range(max(lengths))] for n in lengths]


def test_seq_lens_must_add_up_to_the_tokens():
    sample = {
        "input_ids": np.arange(5),
        "labels": np.arange(5),
        "position_ids": np.arange(5),
        "seq_lens": np.array([2, 2]),
    }
    for collate in (Collator(), Collator(padding_free=True)):
        with pytest.raises(gristmill.errors.GristmillError, match="5 tokens but seq_lens"):
            collate([sample])


def test_hf_names_add_the_boundaries_under_transformers_names(packed):
    """The same batch, and the same facts again under the names transformers and TRL take; the
    batch of a loader's worker too (its cu_seqlens in the samples' spare memory)."""
    samples = [packed[i] for i in range(3)]
    plain = Collator(padding_free=True, block_mask=False)(samples)
    named = Collator(padding_free=True, block_mask=False, hf_names=True)
    for batch in (named(samples), named.batches(packed.batch([0, 1, 2, 3]), [3, 1])[0]):
        assert set(batch) - set(plain) == {
            "cu_seq_lens_q",
            "cu_seq_lens_k",
            "max_length_q",
            "max_length_k",
        }
        for key in plain:
            assert torch.equal(torch.as_tensor(batch[key]), torch.as_tensor(plain[key])), key
        for suffix in ("q", "k"):
            assert torch.equal(batch[f"cu_seq_lens_{suffix}"], plain["cu_seqlens"])
            assert batch[f"cu_seq_lens_{suffix}"].dtype == torch.int32
            assert batch[f"max_length_{suffix}"] == plain["max_seqlen"]
    with pytest.raises(gristmill.errors.GristmillError, match="pass padding_free=True"):
        Collator(hf_names=True)
