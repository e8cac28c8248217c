"""The torch collator with a real (tiny, randomly initialised) transformers causal LM: a packed
batch gives exactly the per-document losses with every attention implementation that runs on a
CPU, through transformers' own mask building and through attention written here (plain PyTorch
SDPA with the boolean mask, FlexAttention with the BlockMask, and a stand-in for
flash-attention's variable-length kernel that reads the batch's boundaries as that path does)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gristmill

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: E402
from transformers import AttentionInterface  # noqa: E402

from gristmill.torch import Collator  # noqa: E402

# flex_attention runs uncompiled here, on purpose (see uncompiled_flex), and says so each time.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


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


def _per_document_loss(model, samples) -> float:
    """The token-weighted mean of each document's loss, run on its own."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in _documents(samples):
            targets = int((labels[0, 1:] != -100).sum())
            if targets:
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
                total += loss.item() * targets
                count += targets
    return total / count


def _samples(packed, count=4):
    """Packed samples of different lengths: padded rows hold padding."""
    samples = [packed[i] for i in range(len(packed))]
    samples.sort(key=lambda s: len(s["input_ids"]))
    samples = samples[:: len(samples) // count][:count]
    assert sum(len(s["seq_lens"]) for s in samples) >= 2 * count  # really packed
    assert len({len(s["input_ids"]) for s in samples}) == count
    return samples


def _loss(model, batch) -> float:
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.fixture
def uncompiled_flex(monkeypatch):
    """transformers' flex attention path with ``flex_attention`` and ``create_block_mask`` run
    as they are, not compiled: torch's compiled FlexAttention kernel for CPUs gives wrong
    outputs for sequences shorter than a block and fails to compile for some masks, whatever
    the mask says, and compiling anew for every length of the test's documents takes minutes.
    transformers' own mask functions and calls are unchanged."""
    import transformers.integrations.flex_attention as flex
    import transformers.masking_utils as masking
    from torch.nn.attention.flex_attention import create_block_mask

    def plain(query, key, value, training=False, **options):
        return flex_attention(query, key, value, **options)

    def uncompiled_mask(*args, _compile=False, **options):
        return create_block_mask(*args, **options)

    monkeypatch.setattr(flex, "compile_friendly_flex_attention", plain)
    monkeypatch.setattr(masking, "create_block_mask", uncompiled_mask)


COLLATORS = {
    "default": {},
    "padded": {"padding_free": False},
    "additive": {"padding_free": False, "mask": "additive"},
}


@pytest.mark.parametrize("options", list(COLLATORS.values()), ids=list(COLLATORS))
@pytest.mark.parametrize("attention", ["eager", "sdpa", "flex_attention"])
def test_a_packed_batch_has_the_loss_of_its_documents(packed, attention, options, uncompiled_flex):
    """``model(**batch)`` as it comes: transformers builds the mask from the positions (no
    mask, no cache), or takes the 4-D additive one as it is."""
    model = _model(attention)
    samples = _samples(packed)
    expected = _per_document_loss(model, samples)
    assert abs(_loss(model, Collator(**options)(samples)) - expected) < 1e-5
    assert abs(_loss(model, Collator.for_model(model)(samples)) - expected) < 1e-5


def test_the_block_mask_keeps_documents_apart_in_transformers_flex_attention(
    packed, uncompiled_flex
):
    """A ``BlockMask`` given as ``attention_mask`` goes to flex attention as it is."""
    model = _model("flex_attention")
    samples = _samples(packed)
    expected = _per_document_loss(model, samples)
    for padding_free in (True, False):
        batch = Collator(padding_free=padding_free, mask="flex")(samples)
        assert isinstance(batch["attention_mask"], BlockMask)
        assert abs(_loss(model, batch) - expected) < 1e-5


def _sdpa_with_the_bool_mask(module, query, key, value, attention_mask, scaling=None, **_):
    """Plain PyTorch: the batch's boolean mask as SDPA's ``attn_mask``."""
    assert attention_mask.dtype == torch.bool and attention_mask.dim() == 4
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _flex_with_the_block_mask(module, query, key, value, attention_mask, scaling=None, **_):
    """Plain PyTorch: the batch's ``BlockMask`` as flex_attention's ``block_mask``."""
    assert isinstance(attention_mask, BlockMask)
    out = flex_attention(query, key, value, block_mask=attention_mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _varlen_stand_in(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """What flash-attention's variable-length path does with a batch without a mask: every
    row's tokens laid end to end, causal attention within each ``cu_seq_lens_q`` sequence
    (a loop here, one kernel call there). It reads the same keyword arguments."""
    assert attention_mask is None
    starts = kwargs["cu_seq_lens_q"].tolist()
    assert kwargs["cu_seq_lens_k"].tolist() == starts
    rows, heads, width, dim = query.shape
    flat = [x.transpose(1, 2).reshape(rows * width, heads, dim) for x in (query, key, value)]
    assert starts[-1] == rows * width
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == max(np.diff(starts), default=0)
    out = torch.empty_like(flat[0])
    for a, b in itertools.pairwise(starts):
        q, k, v = (x[a:b].transpose(0, 1) for x in flat)
        out[a:b] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling).transpose(
            0, 1
        )
    return out.view(rows, width, heads, dim), None


ATTENTION = {
    "gristmill_sdpa_bool": (_sdpa_with_the_bool_mask, [{"padding_free": False, "mask": "bool"}]),
    "gristmill_flex_block_mask": (
        _flex_with_the_block_mask,
        [{"mask": "flex"}, {"padding_free": False, "mask": "flex"}],
    ),
    "gristmill_varlen_stand_in": (_varlen_stand_in, [{}, {"padding_free": False}]),
}


@pytest.mark.parametrize("name", list(ATTENTION))
def test_attention_written_by_hand_gets_the_loss_of_its_documents(packed, name):
    """An attention implementation transformers does not know gets the batch's mask as it is
    (a 4-D one) and the other keys as keyword arguments: each of the batches meant for such
    attention keeps the documents apart."""
    function, collators = ATTENTION[name]
    AttentionInterface.register(name, function)
    model = _model(name)
    samples = _samples(packed)
    expected = _per_document_loss(_model("sdpa"), samples)
    for options in collators:
        assert abs(_loss(model, Collator(**options)(samples)) - expected) < 1e-5, options


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_cache_would_let_documents_attend_to_each_other(packed, attention):
    """The reason for the batch's ``use_cache=False``: with a cache (the config's default,
    and in training mode too), transformers no longer reads the documents from the positions.
    Likewise a 2-D padding mask. The batch as it comes is exact."""
    model = _model(attention)
    assert model.config.use_cache  # what a user's model has
    samples = _samples(packed)
    expected = _per_document_loss(model, samples)
    batch = Collator()(samples)
    assert batch["use_cache"] is False and "attention_mask" not in batch
    leaks = [
        {**batch, "use_cache": True},
        {k: v for k, v in batch.items() if k != "use_cache"},
        Collator(padding_free=False, mask="padding")(samples),
    ]
    for leaky in leaks:
        assert abs(_loss(model, leaky) - expected) > 1e-4
    model.train()  # training mode builds the cache all the same
    with torch.no_grad():
        trained = model(**{k: v for k, v in batch.items() if k != "use_cache"}).loss.item()
        guarded = model(**batch).loss.item()
    assert abs(trained - expected) > 1e-4 and abs(guarded - expected) < 1e-5


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_one_row_gives_the_padded_rows_logits(packed, attention):
    model = _model(attention)
    samples = _samples(packed, 3)
    padded = Collator(padding_free=False)(samples)
    flat = Collator(padding_free=True)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert flat["input_ids"].shape == (1, sum(lengths))
    with torch.no_grad():
        rows = model(**padded).logits
        one = model(**flat).logits[0]
    expected = torch.cat([rows[i, :n] for i, n in enumerate(lengths)])
    assert torch.allclose(one, expected, atol=1e-5)
    assert torch.isfinite(rows).all()  # padding positions too


def test_for_model_picks_the_layout_of_each_attention():
    """One padding-free row where attention is per sequence (flash, flex); padded rows for
    SDPA and eager, which build a mask per row from the positions."""
    assert not Collator.for_model(_model("sdpa")).padding_free
    assert not Collator.for_model(_model("eager")).padding_free
    assert Collator.for_model(_model("flex_attention")).padding_free
    model = _model("sdpa")
    for name in ("flash_attention_2", "flash_attention_3", "flash_attention_4"):
        # flash-attention does not run here: only the configuration is read.
        model.config._attn_implementation = name
        collate = Collator.for_model(model)
        assert collate.padding_free and collate.mask is None
    assert not Collator.for_model(model, padding_free=False).padding_free
    assert Collator.for_model(model, pad_id=3).pad_id == 3


def test_for_model_refuses_what_it_does_not_know():
    model = _model("sdpa")
    for name in ("paged|eager", "kernels-community/something"):
        model.config._attn_implementation = name
        with pytest.raises(gristmill.GristmillError, match=rf"'{name}' is not one it knows"):
            Collator.for_model(model)
    with pytest.raises(gristmill.GristmillError, match="takes a transformers model"):
        Collator.for_model(torch.nn.Linear(2, 2))
    with pytest.raises(gristmill.GristmillError, match="chooses the mask"):
        Collator.for_model(_model("sdpa"), mask="bool")
