"""Shared fixtures: small gristmill datasets prepared here, and Megatron's own reader.

The tests read every export back with megatron-core (``IndexedDataset``, ``GPTDataset``), which
the tox env ``contrib-megatron`` installs with a CPU torch; the writer itself needs neither.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gristmill


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test outputs are throwaway: skip gristmill's fsync calls (also in CLI subprocesses).
    monkeypatch.setenv("GRISTMILL_FSYNC", "0")


@pytest.fixture(scope="session")
def megatron() -> Any:
    """``megatron.core.datasets.indexed_dataset``; importing megatron.core warns about the
    optional fused kernels (Transformer Engine, Apex) that a CPU reader never uses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def texts(count: int, seed: int = 0) -> list[str]:
    """``count`` texts of varied lengths (1 to a few hundred characters), some not ASCII."""
    rng = np.random.default_rng(seed)
    words = ["grist", "mill", "Megatron", "token", "ünïcode", "数据", "🙂", "x", "a b"]
    return [" ".join(rng.choice(words, int(rng.integers(1, 60))).tolist()) for _ in range(count)]


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    def write(records: Sequence[dict[str, Any]], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    return write


@pytest.fixture
def prepare(tmp_path: Path, write_jsonl: Callable[..., Path]) -> Callable[..., Path]:
    """``prepare(records, name="ds", **options)``: a dataset prepared from these records."""

    def run(records: Sequence[dict[str, Any]], name: str = "ds", **options: Any) -> Path:
        source = write_jsonl(records, f"{name}.jsonl")
        out = tmp_path / name
        options = {"progress": False, "workers": 1, **options}
        gristmill.prepare(source, out, **options)
        return out

    return run


def documents(path: Path, split: str) -> Iterator[np.ndarray]:
    """Every document's token ids, as gristmill serves them."""
    reader = gristmill.open_dataset(path, split).documents
    for i in range(reader.num_documents):
        yield reader.document(i)[0]
