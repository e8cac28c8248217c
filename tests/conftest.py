from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings


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

# Examples per property test, by GRISTMILL_HYPOTHESIS_PROFILE: "dev" (the default) for a quick
# run at a desk, "ci" for every push (tox's test envs), "nightly" for the long fuzzing run (tox -e
# fuzz). A test much costlier per example than the others takes a share of these
# (tests.helpers.examples); the fuzz tests take all of them unless GRISTMILL_FUZZ_EXAMPLES says
# otherwise. No deadline: timings on shared CI machines vary too much to fail a test on.
PROFILE_VARIABLE = "GRISTMILL_HYPOTHESIS_PROFILE"
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True)
settings.register_profile("nightly", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get(PROFILE_VARIABLE) or "dev")

# The tests write thousands of tiny files: skip fsync, here and in the processes they start (a
# killed process still tears nothing). test_interrupted.py turns it back on for its runs.
os.environ.setdefault("GRISTMILL_FSYNC", "0")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stamps of checked dataset files go to the session's folder, not the user's cache."""
    os.environ.setdefault("GRISTMILL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
