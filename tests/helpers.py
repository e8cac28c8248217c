"""Helpers shared by the test modules."""

from __future__ import annotations

import os
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
