"""Helpers the benchmark scripts share: options, package versions, the targets and environment
they print, and the byte-level BPE they train."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each package (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def ints(text: str) -> list[int]:
    """A comma-separated option: ``"10,100"`` → ``[10, 100]``."""
    return [int(x) for x in text.split(",") if x]


def print_targets(targets: Sequence[tuple[str, bool | None]]) -> None:
    """The issue's targets, each PASS, FAIL or n/a (not measured)."""
    print("\ntargets (the issue's):")
    for text, ok in targets:
        print(f"  {'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {text}")


def environment(load_before: float, packages: Iterable[str]) -> str:
    """Python, cores, the load average before and now, and the packages' versions."""
    found = versions(packages)
    return (
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; "
        + ", ".join(f"{k} {v}" for k, v in found.items() if v)
    )


def train_bpe(texts: Iterable[str], path: Path, *, vocab_size: int, eos: str) -> Path:
    """A byte-level BPE (GPT-2 split, ``eos`` its only special token) trained on ``texts``,
    saved as the tokenizers JSON ``path`` once complete. Deterministic for the same texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return path
