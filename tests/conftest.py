from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
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


@pytest.fixture(scope="session")
def prepared_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``prepared_dataset(records, **options)``: a dataset prepared with ``gristmill.prepare``
    from ``records``, once per session for the same records and options (shared: a test that
    changes the dataset copies it first).

    ``records``: dicts, written as ``data.jsonl``; or name → dicts, one ``NAME.jsonl`` each,
    prepared together in that order. The dataset is the folder ``ds`` beside those files.
    """
    import gristmill

    made: dict[str, Path] = {}

    def prepare(records: Sequence[dict] | Mapping[str, Sequence[dict]], **options: Any) -> Path:
        files = dict(records) if isinstance(records, Mapping) else {"data": records}
        key = json.dumps([files, sorted(options.items())], sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest not in made:
            root = tmp_path_factory.mktemp("prepared")
            paths = []
            for name, rows in files.items():
                paths.append(root / f"{name}.jsonl")
                paths[-1].write_text(
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"
                )
            gristmill.prepare(paths, root / "ds", **{"progress": False, **options})
            made[digest] = root / "ds"
        return made[digest]

    return prepare


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
