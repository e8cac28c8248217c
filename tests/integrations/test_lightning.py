"""Lightning with a gristmill loader, as docs/integrations.md writes it: ``train_dataloader()``
returns the loader and ``Trainer(use_distributed_sampler=False)`` leaves it as it is. Lightning
saves the loader's ``state_dict()`` in its checkpoints, so a run resumed from one sees exactly
the batches of the uninterrupted run. Both of Lightning's packages are tried: ``lightning``
(``lightning.pytorch``) and ``pytorch-lightning`` (``pytorch_lightning``)."""

from __future__ import annotations

import pytest

import gristmill

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import gristmill.torch  # noqa: E402
from tests.torch.test_collator import _model  # noqa: E402


def _lightning(name: str):
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install {name})")


def _module(pl, ds, seen: list):
    """The recipe's LightningModule, recording the batches it trains on."""

    class Packed(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _model("sdpa").train()

        def train_dataloader(self):
            return gristmill.torch.dataloader(ds, batch_size=4, seed=1)

        def training_step(self, batch, index):
            seen.append(batch["input_ids"].clone())
            loss = self.model(**batch).loss
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return Packed()


def _trainer(pl, tmp_path, steps: int):
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,  # the loader serves this rank's share already
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_trains_and_resumes_with_the_loaders_own_state(dataset, tmp_path, package):
    pl = _lightning(package)
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    before: list = []
    first = _trainer(pl, tmp_path, 3)
    first.fit(_module(pl, ds, before))
    first.save_checkpoint(tmp_path / "step3.ckpt")

    after: list = []
    _trainer(pl, tmp_path, 6).fit(_module(pl, ds, after), ckpt_path=tmp_path / "step3.ckpt")
    whole = [
        b["input_ids"]
        for _, b in zip(range(6), gristmill.torch.dataloader(ds, batch_size=4, seed=1))
    ]
    assert len(before) == len(after) == 3
    assert all(torch.equal(a, b) for a, b in zip(before + after, whole, strict=True))
