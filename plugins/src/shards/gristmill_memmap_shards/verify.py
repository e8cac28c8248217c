"""``gristmill verify`` for memmap shards: the index, the token ids and the mask, read in full.

Runs on a shard whose files are present with the sizes and SHA-256 sums the manifest lists, so
what it finds was wrong when the shard was written (or the manifest was edited to match).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.plugin.components import Problem

BLOCK = 1 << 24  # elements read at a time, so memory stays flat on large shards


def verify_shard(
    directory: Path, shard: dict[str, Any], *, dtype: str, vocab_size: int | None
) -> Iterator[Problem]:
    """Offsets start at 0, never decrease and end at the token count; every id is below
    ``vocab_size``; the mask holds only 0 and 1, and its ones add up to ``num_loss_tokens``."""
    wrong = list(_wrong_sizes(shard, dtype))
    if wrong:
        yield from wrong
        return  # the arrays cannot be read as the counts say
    yield from _check_offsets(directory, shard)
    if vocab_size is not None:
        yield from _check_ids(directory, shard["tokens"]["path"], dtype, vocab_size)
    yield from _check_mask(directory, shard)


def _wrong_sizes(shard: dict[str, Any], dtype: str) -> Iterator[Problem]:
    """The files whose size does not fit the shard's document and token counts."""
    n_docs, n_tokens = shard["num_documents"], shard["num_tokens"]
    itemsize = np.dtype(dtype).itemsize
    sizes = [("tokens", n_tokens * itemsize), ("offsets", (n_docs + 1) * 8)]
    if shard.get("mask") is not None:
        sizes.append(("mask", n_tokens))
    for key, expected in sizes:
        if shard[key]["bytes"] != expected:
            yield Problem(
                shard[key]["path"],
                f"{shard[key]['bytes']} bytes, but {n_docs} documents of {n_tokens} tokens "
                f"({dtype}) need {expected}",
            )


def _check_offsets(directory: Path, shard: dict[str, Any]) -> Iterator[Problem]:
    n_docs, n_tokens = shard["num_documents"], shard["num_tokens"]
    offsets_at = shard["offsets"]["path"]
    offsets = np.memmap(directory / offsets_at, "<i8", "r", shape=(n_docs + 1,))
    if offsets[0] != 0:
        yield Problem(f"{offsets_at}[0]", f"the first offset is {offsets[0]}, not 0")
    steps = np.diff(offsets)
    if (steps < 0).any():
        at = int(np.argmax(steps < 0)) + 1
        yield Problem(
            f"{offsets_at}[{at}]",
            f"offsets go back from {offsets[at - 1]} to {offsets[at]} (document {at - 1})",
        )
    if offsets[-1] != n_tokens:
        yield Problem(
            f"{offsets_at}[{n_docs}]",
            f"the last offset is {offsets[-1]}, but the shard has {n_tokens} tokens",
        )


def _check_ids(directory: Path, tokens_at: str, dtype: str, vocab_size: int) -> Iterator[Problem]:
    """The first id not below ``vocab_size``, if any."""
    tokens = np.memmap(directory / tokens_at, np.dtype(dtype).newbyteorder("<"), "r")
    for lo in range(0, len(tokens), BLOCK):
        block = tokens[lo : lo + BLOCK]
        bad = np.flatnonzero(block >= vocab_size)
        if len(bad):
            at = lo + int(bad[0])
            yield Problem(
                f"{tokens_at}[{at}]",
                f"token id {tokens[at]} is not below the vocabulary size {vocab_size} "
                f"({len(bad)} such id(s) in elements {lo}…{lo + len(block) - 1})",
            )
            return


def _check_mask(directory: Path, shard: dict[str, Any]) -> Iterator[Problem]:
    """The mask holds only 0 and 1 and its ones add up to ``num_loss_tokens``; without a mask,
    every token carries loss."""
    mask_entry = shard.get("mask")
    if mask_entry is None:
        if shard["num_loss_tokens"] != shard["num_tokens"]:
            yield Problem(
                shard["tokens"]["path"],
                f"no mask, so every token carries loss, but num_loss_tokens is "
                f"{shard['num_loss_tokens']}, not {shard['num_tokens']}",
            )
        return
    mask = np.memmap(directory / mask_entry["path"], "u1", "r")
    ones = 0
    for lo in range(0, len(mask), BLOCK):
        block = mask[lo : lo + BLOCK]
        bad = np.flatnonzero(block > 1)
        if len(bad):
            at = lo + int(bad[0])
            yield Problem(f"{mask_entry['path']}[{at}]", f"mask value {mask[at]} is not 0 or 1")
            return
        ones += int(block.sum(dtype=np.int64))
    if ones != shard["num_loss_tokens"]:
        yield Problem(
            mask_entry["path"],
            f"{ones} tokens carry loss, but num_loss_tokens is {shard['num_loss_tokens']}",
        )
