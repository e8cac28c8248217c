"""Hugging Face ``Trainer`` (which needs accelerate) on a gristmill dataset and collator, as
docs/integrations.md writes it."""

from __future__ import annotations

import pytest

import gristmill

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate", reason="Hugging Face Trainer needs accelerate")
import gristmill.torch  # noqa: E402
from tests.torch.test_collator import _model  # noqa: E402


def test_hugging_face_trainer_trains_on_packed_samples(dataset, tmp_path):
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
        remove_unused_columns=False,  # keep seq_lens: the collator needs the boundaries
    )
    model = _model("sdpa")
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=gristmill.torch.Collator.for_model(model),
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
