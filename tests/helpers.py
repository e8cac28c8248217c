"""Helpers shared by the test modules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

DISTS = Path(__file__).parent / "data" / "dists"


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
    ``generation`` (random for every prepare, by design) reads as ``GENERATION``."""
    return {
        str(p.relative_to(root)): GENERATION.sub(rb'"generation": "GENERATION"', p.read_bytes())
        if p.name == "manifest.json"
        else p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


GENERATION = re.compile(rb'"generation": "[0-9a-f]{32}"')
