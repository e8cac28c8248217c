from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write records (dicts, or raw lines as str/bytes) to a .jsonl file under tmp_path."""

    def write(records: Iterable[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "wb") as f:
            for record in records:
                if isinstance(record, bytes):
                    f.write(record + b"\n")
                elif isinstance(record, str):
                    f.write(record.encode() + b"\n")
                else:
                    f.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        return path

    return write


pytest_plugins = ["pytester"]

# The tests write thousands of tiny files: skip fsync, here and in the processes they start (a
# killed process still tears nothing). test_interrupted.py turns it back on for its runs.
os.environ.setdefault("GRISTMILL_FSYNC", "0")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stamps of checked dataset files go to the session's folder, not the user's cache."""
    os.environ.setdefault("GRISTMILL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
