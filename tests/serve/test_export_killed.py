"""``gristmill export`` killed with SIGKILL at any point, then run again: the output is the same
bytes as an export that was never interrupted, nothing else is left beside it, no process lives
on, and whatever the kill left under the output's name is a whole export.

The export runs as a real process with a profiling hook that counts its filesystem calls (those
of gristmill's export, of the exporter and of the standard library on their behalf) and sends
itself SIGKILL just before call number ``point``: every point is reachable and each run is
repeatable. The default run tries a few fixed points; ``tox -e fuzz`` tries many random ones
(``GRISTMILL_FUZZ_EXAMPLES``, else the hypothesis profile's examples).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from tests.helpers import DISTS, fuzz_examples, tree_bytes

PLUGIN = DISTS / "exporter"  # the `chunks` exporter: many small files per split
EXAMPLES = fuzz_examples()

KILLER = """
import os, signal, sys
from gristmill.cli import main

CALLS = {"write", "mkdir", "mkdtemp", "rename", "replace", "unlink", "rmdir", "fsync", "flock"}
MINE = ("export.py", "shutil.py", "tempfile.py", "pathlib.py", "gristmill_fake_exporter.py")
EXPORT = os.path.join("gristmill", "serve", "export.py")
# gristmill's record of the files it found intact: outside the output, and written only for
# files a few seconds old, so not one of the export's own steps (and not the same in every run)
STAMPS = os.path.join("gristmill", "plugin", "integrity.py")
point, seen = int(sys.argv[1]), 0

def exporting(frame):
    while frame is not None:
        if frame.f_code.co_filename.endswith(STAMPS):
            return False
        if frame.f_code.co_filename.endswith(EXPORT):
            return True
        frame = frame.f_back
    return False

def hook(frame, event, arg):
    global seen
    if event == "c_call" and getattr(arg, "__name__", "") in CALLS:
        if frame.f_code.co_filename.endswith(MINE) and exporting(frame):
            seen += 1
            if seen == point:
                os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(hook)
code = main(sys.argv[2:])
sys.setprofile(None)
print("calls:", seen)
sys.exit(code)
"""


def test_the_killer_names_modules_that_exist():
    """The kill points are found by module path: a module moved elsewhere would silently leave
    the export unkilled (or the stamps killed)."""
    root = Path(gristmill.__file__).parent.parent
    for name in ("EXPORT", "STAMPS"):
        line = next(line for line in KILLER.splitlines() if line.startswith(f"{name} ="))
        parts = line.split("os.path.join(", 1)[1].rstrip(")").replace('"', "").split(", ")
        assert (root / os.path.join(*parts)).is_file(), line


def export_args(root: Path, *extra: str) -> list[str]:
    return [
        "export",
        str(root / "ds"),
        "--to",
        "chunks",
        "-o",
        str(root / "exports" / "out"),
        *extra,
    ]


def run_until(point: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``gristmill`` with ``args``, killed just before its filesystem call ``point`` (0: never),
    in a session of its own; afterwards no process of that session may be alive."""
    env = {
        **os.environ,
        "GRISTMILL_FSYNC": "1",  # the syncs are points to be killed at too
        "PYTHONPATH": os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(point), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=300)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the killed export lives on
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A dataset of many shards and two splits, and its uninterrupted exports: ``clean`` (every
    split) and ``old`` (val only, the earlier export an overwrite replaces)."""
    root = tmp_path_factory.mktemp("killed")
    data = root / "data.jsonl"
    data.write_text("".join(f'{{"text": "document {i} {"x" * (i % 23)}"}}\n' for i in range(400)))
    gristmill.prepare(
        [data], root / "ds", tokenizer="byte", val_fraction=0.2, tokens_per_shard=3000
    )
    for name, extra in (("clean", ()), ("old", ("--split", "val"))):
        done = run_until(0, export_args(root, *extra))
        assert done.returncode == 0, done.stderr
        (root / "exports" / "out").rename(root / name)
    return root


@pytest.fixture(scope="module")
def calls(root) -> dict[bool, int]:
    """How many filesystem calls an uninterrupted export makes: into a new output (``False``)
    and over an earlier export (``True``)."""
    counts = {}
    for over_old in (False, True):
        out = fresh_output(root, over_old)
        done = run_until(0, export_args(root, "--overwrite"))
        assert done.returncode == 0 and tree_bytes(out) == tree_bytes(root / "clean"), done.stderr
        counts[over_old] = int(done.stdout.rsplit("calls:", 1)[1])
    return counts


def fresh_output(root: Path, over_old: bool) -> Path:
    """An empty ``exports`` folder, holding the earlier export as ``out`` if ``over_old``."""
    exports = root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    exports.mkdir()
    out = exports / "out"
    for name, data in tree_bytes(root / "old").items() if over_old else ():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    return out


def kill_then_rerun(root: Path, point: int, *, over_old: bool) -> None:
    out = fresh_output(root, over_old)
    killed = run_until(point, export_args(root, "--overwrite"))
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr)
    # Whatever carries the output's name is a whole export: the earlier one or the new one.
    if out.exists():
        assert tree_bytes(out) in (tree_bytes(root / "old"), tree_bytes(root / "clean")), point

    again = run_until(0, export_args(root, "--overwrite"))
    assert again.returncode == 0, (point, again.stderr)
    assert tree_bytes(out) == tree_bytes(root / "clean"), point
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"], point  # no workspace left


@pytest.mark.parametrize("over_old", [False, True], ids=["new", "over-an-earlier-one"])
@pytest.mark.parametrize("where", [0.3, 0.66, 1.0], ids=["exporting", "committing", "last"])
def test_a_killed_export_then_a_rerun_is_a_clean_export(root, calls, where, over_old):
    kill_then_rerun(root, max(1, round(where * calls[over_old])), over_old=over_old)


@settings(
    max_examples=max(2, EXAMPLES // 25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), over_old=st.booleans())
def test_a_randomly_killed_export_then_a_rerun_is_a_clean_export(root, calls, data, over_old):
    point = data.draw(st.integers(1, calls[over_old]), label="point")
    kill_then_rerun(root, point, over_old=over_old)
