"""A plain PyTorch loop with a real (tiny) model that checkpoints the loader mid-epoch and resumes
with identical batches, and a dataset as Hugging Face's trainers take it. The trainers
themselves (Hugging Face Trainer, TRL, accelerate, Lightning) run in tox's integrations env,
tests/integrations/."""

from __future__ import annotations

import pickle

import numpy as np
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


def _train(model, optimizer, loader, batches, steps=None):
    """Train on ``loader`` from where it is; record every batch's input ids."""
    for batch in loader:
        batches.append(batch["input_ids"].clone())
        loss = model(**batch).loss
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


def test_as_hf_dataset_serves_the_samples_it_is_asked_for(dataset):
    datasets = pytest.importorskip("datasets")
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    hf = gristmill.torch.as_hf_dataset(ds)
    assert isinstance(hf, datasets.Dataset) and hf.column_names == ["index"] and len(hf) == len(ds)
    # One row, rows together (as a DataLoader asks), and after a trip to a spawned worker.
    for keys, rows in (
        ([5], [hf[5]]),
        ([3, 0, 7], hf.__getitems__([3, 0, 7])),
        ([1, 2], pickle.loads(pickle.dumps(hf)).__getitems__([1, 2])),
    ):
        for key, row in zip(keys, rows, strict=True):
            assert row.keys() == ds[key].keys()
            assert all(np.array_equal(row[name], ds[key][name]) for name in row)
    mix = gristmill.mixture({"a": ds, "b": ds}, weights={"a": 1, "b": 3})
    with pytest.raises(gristmill.GristmillError, match="a mixture's weights"):
        gristmill.torch.as_hf_dataset(mix)
