"""Lightning on two CPU ranks (``ddp_spawn``, gloo) with a gristmill loader: with
``use_distributed_sampler=False`` the ranks cover the epoch once in equal steps (the loader's
sharding, not a second one); with Lightning's default it refuses the loader and names that
setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gristmill

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")
import gristmill.torch  # noqa: E402
from tests.torch.test_collator import _model  # noqa: E402


class _Ranked(pl.LightningModule):
    """Trains on the dataset at ``path``; each rank writes the samples it served to ``out``."""

    def __init__(self, path: str, out: str):
        super().__init__()
        self.path, self.out = path, out
        self.model = _model("sdpa").train()
        self.served: list = []

    def train_dataloader(self):
        torch.set_num_threads(1)  # two ranks on a shared machine
        ds = gristmill.open_dataset(self.path, seq_len=128, packer="first-fit")
        # A row a sample (padded, no mask), so that each rank's samples can be told apart.
        rows = gristmill.torch.Collator(padding_free=False)
        return gristmill.torch.dataloader(ds, batch_size=3, seed=1, collate_fn=rows)

    def training_step(self, batch, index):
        self.served.append([row[row != 0].tolist() for row in batch["input_ids"]])
        return self.model(**batch).loss

    def on_train_end(self):
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.served))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _fit(path, out, **options) -> None:
    pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        **options,
    ).fit(_Ranked(str(path), str(out)))


def test_two_lightning_ranks_cover_the_epoch_once(dataset, tmp_path):
    _fit(dataset, tmp_path, use_distributed_sampler=False)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    assert len(ranks[0]) == len(ranks[1]) == -(-len(ds) // 6)
    served = sorted(sample for rank in ranks for step in rank for sample in step)
    assert served == sorted(ds[i]["input_ids"].tolist() for i in range(len(ds)))


def test_lightnings_default_sampler_refuses_the_loader_and_names_the_setting(dataset, tmp_path):
    refused = torch.multiprocessing.ProcessRaisedException  # a rank's error, in the parent
    with pytest.raises(refused, match=r"use_distributed_sampler=False"):
        _fit(dataset, tmp_path)
