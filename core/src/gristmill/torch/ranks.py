"""What both loaders share: which rank this is, the repeats that keep ranks in step,
refusing a saved state from another run, and refusing to be rebuilt by another library."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gristmill.errors import GristmillError
from gristmill.serve.samples import IGNORE_INDEX


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """From the arguments, else ``torch.distributed`` once initialised, else ``RANK`` and
    ``WORLD_SIZE`` (as torchrun sets them), else a single process."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            found = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        else:
            found = 0, 1
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise GristmillError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
    return rank, world_size


def rebuilt_elsewhere() -> GristmillError:
    """What a loader's parts raise when a ``DataLoader`` other than their own iterates them.
    accelerate's ``prepare`` rebuilds a loader from its dataset and batch sampler; here those
    serve this rank's share already, a chunk of batches at a time, so the rebuilt loader would
    yield lists of batches, or shard the rank's steps again, without a word."""
    return GristmillError(
        "this gristmill loader is being iterated by another DataLoader built from its parts "
        "(accelerate's prepare does that): it already serves this rank's share of every step "
        "and resumes with its own state_dict, so iterate it as it is. With accelerate, prepare "
        "the model and optimizer only and move each batch to accelerator.device yourself"
    )


def as_repeat(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample served again to keep ranks in step: no labels, and it says so."""
    return {**sample, "labels": np.full_like(sample["labels"], IGNORE_INDEX), "repeat": True}


def refuse_other_runs(
    state: Mapping[str, Any],
    mine: Mapping[str, Any],
    compared: tuple[tuple[str, str], ...],
    remedy: str,
) -> None:
    """Refuse a state of another format or version, or one whose ``compared`` keys (key, what
    it is) differ from this loader's, naming each difference and saying ``remedy``."""
    if state.get("format") != mine["format"] or state.get("version") != mine["version"]:
        raise GristmillError(
            f"not a {mine['format']} state (or from an incompatible version): "
            f"format {state.get('format')!r}, version {state.get('version')!r}"
        )
    differences = [
        f"{what}: {state.get(key)!r} in the state, {mine[key]!r} here"
        for key, what in compared
        if state.get(key) != mine[key]
    ]
    if differences:
        raise GristmillError(
            "this state is from another run, so it cannot resume this loader exactly ("
            + "; ".join(differences)
            + f"); {remedy}"
        )
