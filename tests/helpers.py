"""Helpers shared by the test modules."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from hypothesis import settings

from gristmill.plugin.components import Rejected, Where

DISTS = Path(__file__).parent / "data" / "dists"


def examples(share: float) -> int:
    """``max_examples`` for a property test that costs much more per example than most: this
    share of the loaded hypothesis profile's (tests/conftest.py), at least 2."""
    return max(2, round(settings.default.max_examples * share))


def fuzz_examples() -> int:
    """The fuzz tests' budget: ``GRISTMILL_FUZZ_EXAMPLES``, else the hypothesis profile's."""
    return int(os.environ.get("GRISTMILL_FUZZ_EXAMPLES") or settings.default.max_examples)


def run_gristmill(*args: str, env: dict[str, str] | None = None, extra_path: Iterable[Path] = ()):
    """Run the installed ``gristmill`` command as a real process."""
    full_env = {**os.environ, **(env or {})}
    paths = [str(p) for p in extra_path]
    if paths:
        full_env["PYTHONPATH"] = os.pathsep.join([*paths, full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "gristmill.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path: for byte-identical comparisons. A manifest's
    ``generation`` (random for every prepare, by design) reads as ``GENERATION``, and its seal
    (which hashes the generation too) as ``SEAL``."""
    return {
        str(p.relative_to(root)): masked_manifest(p.read_bytes())
        if p.name == "manifest.json"
        else p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def masked_manifest(data: bytes) -> bytes:
    """A manifest's bytes with its generation and seal masked: equal for two identical prepares."""
    data = GENERATION.sub(rb'"generation": "GENERATION"', data)
    return SEAL.sub(rb'"manifest_sha256": "SEAL"', data)


GENERATION = re.compile(rb'"generation": "[0-9a-f]{32}"')
SEAL = re.compile(rb'"manifest_sha256": "[0-9a-f]{64}"')


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120, group: bool = False) -> None:
    """SIGKILL ``proc`` (its process group too, with ``group``) once ``ready()`` or it ends."""
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.wait()


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (read from /proc: Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def train_bpe(
    texts: Iterable[str],
    *,
    vocab_size: int,
    specials: Iterable[str] = (),
    model=None,
    normalizer=None,
    pre_tokenizer=None,
    decoder=None,
    alphabet: Iterable[str] | None = None,
):
    """A BPE ``tokenizers.Tokenizer`` trained on ``texts``: byte-level (GPT-2 split, every byte
    in the initial alphabet) unless ``pre_tokenizer``, ``decoder`` and ``alphabet`` say other.
    Deterministic for the same arguments. ``model`` replaces a plain ``models.BPE()``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(model if model is not None else models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoder or decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        if alphabet is None
        else list(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def read_all(source) -> list:
    """A source's records, and its rejections in their place."""
    return [item if isinstance(item, Rejected) else item[0] for item in source.records()]


def wheres(source) -> list[Where]:
    """Where each record (or rejection) of a source came from."""
    return [item.where if isinstance(item, Rejected) else item[1] for item in source.records()]
