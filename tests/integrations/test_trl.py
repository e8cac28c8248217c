"""TRL's ``SFTTrainer`` on a gristmill dataset, as docs/integrations.md writes it: trained a few
steps with a tiny random Llama and a tokenizer trained here; its loss is exactly the
token-weighted mean of the packed documents' own losses; and what a user meets without the
recipe."""

from __future__ import annotations

import math

import pytest

import gristmill
from tests.helpers import train_bpe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
import gristmill.torch  # noqa: E402
from tests.torch.test_collator import _documents, _model  # noqa: E402

RECORDS = [
    {"prompt": f"What is {i} plus {i % 7}? " * (i % 3 + 1), "completion": f"It is {i + i % 7}."}
    for i in range(120)
]
VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The model's tokenizer, trained here, as a transformers folder: what the user prepares
    with and hands TRL as its ``processing_class``."""
    texts = [r["prompt"] + r["completion"] for r in RECORDS]
    backend = train_bpe(texts, vocab_size=VOCAB, specials=["<pad>", "<eos>"])
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>"
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def ds(prepared_dataset, tokenizer):
    path = prepared_dataset(RECORDS, tokenizer=f"hf:{tokenizer}")
    return gristmill.open_dataset(path, seq_len=128, packer="first-fit")


def _trainer(ds, tokenizer, tmp_path, *, attention="sdpa", train_dataset=None, **options):
    """The recipe of docs/integrations.md; ``options`` change its SFTConfig or collator."""
    collator = options.pop("data_collator", gristmill.torch.Collator(padding_free=True))
    config = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "remove_unused_columns": False,
        "dataset_kwargs": {"skip_prepare_dataset": True},
        **options,
    }
    return trl.SFTTrainer(
        model=_model(attention, VOCAB),
        args=trl.SFTConfig(**config),
        train_dataset=gristmill.torch.as_hf_dataset(ds) if train_dataset is None else train_dataset,
        processing_class=transformers.AutoTokenizer.from_pretrained(str(tokenizer)),
        data_collator=collator,
    )


def test_sft_trainer_trains_an_epoch_and_counts_every_token(ds, tokenizer, tmp_path):
    trainer = _trainer(ds, tokenizer, tmp_path, num_train_epochs=1)
    result = trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert result.global_step == len(logged) == math.ceil(len(ds) / 4)
    assert logged[-1]["loss"] < logged[0]["loss"]  # it learns
    # One epoch: TRL's running token count is every token of the dataset, once.
    assert logged[-1]["num_tokens"] == sum(len(ds[i]["input_ids"]) for i in range(len(ds)))
    assert all(math.isfinite(row["mean_token_accuracy"]) for row in logged)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_sft_trainer_loss_is_the_token_weighted_mean_of_its_documents(
    ds, tokenizer, tmp_path, attention
):
    """The loss SFTTrainer computes for a packed batch (documents told apart by position_ids
    alone) is the token-weighted mean of each document's loss on its own."""
    trainer = _trainer(ds, tokenizer, tmp_path, attention=attention, max_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    row = {k: batch[k][0] for k in ("input_ids", "labels")} | {"seq_lens": batch["seq_lens"]}
    assert len(row["seq_lens"]) >= 8  # really packed: two or more documents a sample
    reference = _model(attention, VOCAB).eval()
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch)).item()
        total, count = 0.0, 0
        for ids, labels in _documents([row]):
            targets = int((labels[0, 1:] != -100).sum())
            if targets:
                total += reference(input_ids=ids, labels=labels).loss.item() * targets
                count += targets
        # The same row with positions that run on: documents see each other, another loss.
        leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            leaky.pop(key)
        crossed = trainer.compute_loss(trainer.model, leaky).item()
    assert abs(loss - total / count) < 1e-5
    assert abs(crossed - total / count) > 1e-4


def test_what_a_user_meets_without_the_recipe(ds, tokenizer, tmp_path):
    """Each step of the recipe is there for a reason that TRL or transformers gives."""
    # TRL takes datasets' own classes only, whatever gristmill's is called.
    with pytest.raises(TypeError, match="must be a `Dataset` or `IterableDataset`"):
        _trainer(ds, tokenizer, tmp_path, train_dataset=ds, max_steps=1)
    # TRL would tokenize and pack again: it refuses a dataset read through a transform.
    with pytest.raises(ValueError, match="skip_prepare_dataset"):
        _trainer(ds, tokenizer, tmp_path, max_steps=1, dataset_kwargs=None)
    # Its own padding-free mode is its own collator's.
    with pytest.raises(ValueError, match="custom data collator"):
        _trainer(ds, tokenizer, tmp_path, max_steps=1, padding_free=True)
    # Removing "unused" columns would remove the one that finds the samples; transformers
    # refuses and names the fix.
    trainer = _trainer(ds, tokenizer, tmp_path, max_steps=1, remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer.train()
    # The padded batch's 4-D additive mask (an opt-in) is not a 0/1 mask: TRL's token count
    # sums it.
    additive = gristmill.torch.Collator(padding_free=False, mask="additive")
    trainer = _trainer(ds, tokenizer, tmp_path, max_steps=1, data_collator=additive)
    trainer.train()
    assert math.isnan(trainer.state.log_history[0]["num_tokens"])
    # Padded rows without a mask: TRL counts the width of position_ids, one row's a batch.
    trainer = _trainer(
        ds, tokenizer, tmp_path, max_steps=1, data_collator=gristmill.torch.Collator()
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.train()
    tokens = int(batch["seq_lens"].sum())
    assert trainer.state.log_history[0]["num_tokens"] == batch["input_ids"].shape[1] < tokens
