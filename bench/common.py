"""Helpers the benchmark scripts share: options, package versions, the targets and environment
they print, and the byte-level BPE they train."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


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


SAMPLE_S = 0.05  # how often the process tree's memory is sampled


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_sampled(
    cmd: Sequence[str], log: Path, env: dict[str, str], timeout: float | None = None
) -> dict[str, Any]:
    """Run ``cmd`` with its output to ``log``, sampling its whole process tree (psutil) every
    50 ms: ``returncode`` (None past ``timeout``, the tree killed), ``peak_rss`` (sum of the
    resident sets), ``peak_pss`` (sum of the proportional sets) and ``wall`` seconds."""
    import psutil

    peak_rss = peak_pss = 0
    began = time.perf_counter()
    with open(log, "w") as out:
        proc = psutil.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            rss = pss = 0
            try:
                tree = [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:  # ended between listing and reading
                    continue
                pss += pss_bytes(p.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            if timeout is not None and time.perf_counter() - began > timeout:
                for p in reversed(tree):
                    try:
                        p.kill()
                    except psutil.Error:
                        continue
                proc.wait()
                return {"returncode": None, "peak_rss": peak_rss, "peak_pss": peak_pss}
            time.sleep(SAMPLE_S)
    wall = time.perf_counter() - began
    return {"returncode": proc.returncode, "peak_rss": peak_rss, "peak_pss": peak_pss, "wall": wall}
