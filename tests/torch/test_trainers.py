"""Real trainer clients: Hugging Face Trainer on a gristmill dataset and collator, and a plain
PyTorch loop that checkpoints the loader mid-epoch and resumes with identical batches."""

from __future__ import annotations

import pytest

import gristmill

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import gristmill.torch  # noqa: E402
from tests.torch.test_collator import _model  # noqa: E402


@pytest.fixture(scope="module")
def dataset(prepared_dataset):
    return prepared_dataset(
        [
            {"prompt": f"question {i}? " * (i % 5 + 1), "completion": f"answer {i}."}
            for i in range(200)
        ]
    )


def test_hugging_face_trainer_trains_on_packed_samples(dataset, tmp_path):
    pytest.importorskip("accelerate")
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,  # keep seq_lens: the collator builds the mask from it
    )
    trainer = transformers.Trainer(
        model=_model("sdpa"), args=args, train_dataset=ds, data_collator=gristmill.torch.Collator()
    )
    result = trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert result.global_step == 6 and len(losses) == 6
    assert losses[-1] < losses[0]  # it learns
    # Without remove_unused_columns=False the collator says how to fix it.
    args.remove_unused_columns = True
    trainer = transformers.Trainer(
        model=_model("sdpa"), args=args, train_dataset=ds, data_collator=gristmill.torch.Collator()
    )
    with pytest.raises(gristmill.GristmillError, match="remove_unused_columns=False"):
        trainer.train()


def _train(model, optimizer, loader, batches, steps=None):
    """Train on ``loader`` from where it is; record every batch's input ids."""
    for batch in loader:
        batches.append(batch["input_ids"].clone())
        model_inputs = {
            k: batch[k] for k in ("input_ids", "labels", "position_ids", "attention_mask")
        }
        loss = model(**model_inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if steps is not None and len(batches) == steps:
            return


def test_a_plain_loop_resumes_mid_epoch_with_identical_batches(dataset, tmp_path):
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")

    def fresh():
        model = _model("sdpa")
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, optimizer = fresh()
    loader = gristmill.torch.dataloader(ds, batch_size=2, num_workers=2, seed=3)
    whole: list = []
    _train(model, optimizer, loader, whole)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer = fresh()
    loader = gristmill.torch.dataloader(ds, batch_size=2, num_workers=2, seed=3)
    before: list = []
    _train(model, optimizer, loader, before, steps=len(whole) // 2)
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "data": loader.state_dict(),
        },
        checkpoint,
    )
    del model, optimizer, loader

    state = torch.load(checkpoint)
    model, optimizer = fresh()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    loader = gristmill.torch.dataloader(ds, batch_size=2, num_workers=0, seed=3)
    loader.load_state_dict(state["data"])
    after: list = []
    _train(model, optimizer, loader, after)
    assert len(before) + len(after) == len(whole)
    assert all(torch.equal(a, b) for a, b in zip(before + after, whole))
    for key, value in model.state_dict().items():
        assert torch.allclose(value, reference[key], atol=1e-6), key


def test_accelerate_trains_on_the_loader_as_it_is(dataset):
    """accelerate prepares the model and optimizer; the loader, which already serves this
    rank's share, is iterated as it is, and preparing it is refused with a way out."""
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = _model("sdpa")
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    loader = gristmill.torch.dataloader(ds, batch_size=4)
    with pytest.raises(gristmill.GristmillError, match="prepare the model and optimizer only"):
        next(iter(accelerator.prepare(loader)))
    losses = []
    for batch in loader:
        keys = ("input_ids", "labels", "position_ids", "attention_mask")
        loss = model(**{k: batch[k].to(accelerator.device) for k in keys}).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert len(losses) == len(loader) and losses[-1] < losses[0]
