"""accelerate with a gristmill loader, as docs/integrations.md writes it: ``prepare`` takes the
model and optimizer, the loader is iterated as it is (it serves this rank's share already) and
registered for accelerate's checkpoints. Two real ranks (gloo) cover the epoch once, in equal
steps, and resume from ``save_state``; every DataLoader setting of accelerate's own ``prepare``
would divide the rank's steps again, so each is refused."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest

import gristmill

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")
from accelerate.utils import send_to_device  # noqa: E402

import gristmill.torch  # noqa: E402
from tests.torch.test_collator import _model  # noqa: E402

SAVED_AFTER = 2  # steps
# A row a sample (padded rows, no mask: exact all the same), so that each rank's samples
# can be told apart.
ROWS = gristmill.torch.Collator(padding_free=False)


def _served(batch) -> list[list[int]]:
    """Each sample of a padded batch: its token ids without the padding (pad_id 0, a byte that
    the test's text never holds)."""
    return [row[row != 0].tolist() for row in batch["input_ids"]]


def _rank(rank: int, world: int, port: int, path: str, out: str) -> None:
    """One rank: the recipe, then everything made again and resumed from accelerate's
    checkpoint."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two ranks on a shared machine
    ds = gristmill.open_dataset(path, seq_len=128, packer="first-fit")

    accelerator = accelerate.Accelerator(cpu=True)
    model = _model("sdpa").train()
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    loader = gristmill.torch.dataloader(ds, batch_size=3, collate_fn=ROWS)
    accelerator.register_for_checkpointing(loader)
    steps, losses = [], []
    for batch in loader:
        everyone = [None] * world
        torch.distributed.all_gather_object(everyone, _served(batch))
        steps.append(everyone)
        loss = model(**send_to_device(batch, accelerator.device)).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if len(steps) == SAVED_AFTER:
            accelerator.save_state(f"{out}/checkpoint")

    # As a restarted job: everything made again, then accelerate's checkpoint loaded.
    accelerator = accelerate.Accelerator(cpu=True)
    model = _model("sdpa").train()
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    resumed = gristmill.torch.dataloader(ds, batch_size=3, collate_fn=ROWS)
    accelerator.register_for_checkpointing(resumed)
    accelerator.load_state(f"{out}/checkpoint")
    rest = [_served(batch) for batch in resumed]
    report = {
        "rank": [loader.rank, loader.world_size],
        "steps": steps,
        "rest": rest,
        "losses": losses,
    }
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(report))
    accelerator.end_training()


def test_two_ranks_cover_the_epoch_once_and_resume_from_accelerates_checkpoint(dataset, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_rank, args=(r, 2, port, str(dataset), str(tmp_path)))
        for r in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in reports] == [[0, 2], [1, 2]]  # from accelerate's process group
    steps = reports[0]["steps"]
    assert steps == reports[1]["steps"]
    # Each rank its own share of every step, and together the epoch once (not divided again).
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    everything = sorted(ds[i]["input_ids"].tolist() for i in range(len(ds)))
    served = [sample for step in steps for share in step for sample in share]
    assert len(steps) == -(-len(ds) // 6) and sorted(served) == everything
    for rank, report in enumerate(reports):
        assert report["rest"] == [step[rank] for step in steps[SAVED_AFTER:]]
        assert report["losses"][-1] < report["losses"][0]


@pytest.mark.parametrize(
    "setting",
    [{}, {"split_batches": True}, {"dispatch_batches": True}, {"even_batches": False}],
    ids=["default", "split_batches", "dispatch_batches", "uneven_batches"],
)
def test_accelerates_own_loader_preparation_is_refused_whatever_its_setting(dataset, setting):
    """``accelerator.prepare(loader)`` rebuilds the loader from its parts and divides its steps
    among the ranks (or splits its batches, or has rank 0 read them all): the loader refuses
    at its first batch, and saying what to do instead; accelerate refuses ``split_batches``
    itself (the loader has no ``batch_size`` to split)."""
    config = accelerate.DataLoaderConfiguration(**setting)
    accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
    ds = gristmill.open_dataset(dataset, seq_len=128, packer="first-fit")
    loader = gristmill.torch.dataloader(ds, batch_size=4, collate_fn=ROWS)
    if setting.get("split_batches"):
        with pytest.raises(ValueError, match="batch_size"):
            accelerator.prepare(loader)
        return
    with pytest.raises(gristmill.GristmillError, match="prepare the model and optimizer only"):
        next(iter(accelerator.prepare(loader)))
    # The loader itself serves on.
    assert next(iter(loader))["input_ids"].shape[0] == 4
