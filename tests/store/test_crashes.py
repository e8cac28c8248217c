"""What the operating system does to a run: a file it may not read, a full disk, a worker killed
(the out-of-memory killer), the main process killed. Each ends in one `gristmill: error:` line
that names the path or the worker and says what to do (exit 2), leaves no temporary file, and
never leaves a worker running."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gristmill.layout import TASKS_DIR
from tests.helpers import alive, children, kill_when, run_gristmill, tree_bytes
from tests.store.test_parallel import big_source  # noqa: F401 (a fixture)

PR_CAPBSET_DROP = 24  # linux/prctl.h


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def _temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def _without_root_file_access() -> None:
    """For a child process run as root: drop the capabilities that let root read any file
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so that a file of mode 000 is unreadable to it as
    to anyone. They leave the bounding set, and with it the program the child runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_source_names_the_file(tmp_path):
    src = tmp_path / "secret.jsonl"
    src.write_text('{"text": "hello"}\n')
    src.chmod(0)
    as_root = os.geteuid() == 0
    for command, out in (("prepare", tmp_path / "out"), ("convert", tmp_path / "out.jsonl")):
        result = subprocess.run(
            [sys.executable, "-m", "gristmill.cli", command, str(src), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_without_root_file_access if as_root else None,
        )
        assert _error_line(result) == (
            f"gristmill: error: {src}: permission denied; check the permissions of it and "
            "of the directories above it (this user must be able to read the input and "
            "write the output)"
        )
        assert not out.exists()


@contextlib.contextmanager
def _small_filesystem(path: Path):
    """A real 1 MiB filesystem at ``path`` (tmpfs: needs root)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _file_size_limit(limit: int):
    """For a child process: writes past ``limit`` bytes fail with EFBIG (not a signal)."""

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("how", ["full-disk", "file-size-limit"])
def test_a_full_disk_is_a_clear_error_and_leaves_no_temporary_file(
    big_source,  # noqa: F811
    tmp_path,
    how,
    workers,
):
    args = [str(big_source), "--workers", str(workers), "--task-bytes", "2000000"]
    args += ["--tokens-per-shard", "4000000", "--no-progress"]
    with contextlib.ExitStack() as stack:
        if how == "full-disk":
            where = stack.enter_context(_small_filesystem(tmp_path / "small"))
            limit, advice = None, "no space left on device; free some space, or write the"
        else:
            where, limit = tmp_path, _file_size_limit(1 << 20)
            advice = "file too large (a file size limit, ulimit -f); raise the limit"
        for command, out in (("prepare", where / "ds"), ("convert", where / "out.jsonl")):
            options = args if command == "prepare" else [str(big_source)]
            result = subprocess.run(
                [sys.executable, "-m", "gristmill.cli", command, *options, "-o", str(out)],
                capture_output=True,
                text=True,
                timeout=300,
                preexec_fn=limit,
            )
            line = _error_line(result)
            assert line.startswith(f"gristmill: error: {out}"), line
            assert advice in line, line
            assert _temporary_files(where) == []
            assert not out.with_name(f"{out.name}.rejects.jsonl").exists()


def _workers(pid: int) -> list[int]:
    """The pool's worker processes among ``pid``'s children (not multiprocessing's resource
    tracker)."""
    return [
        child
        for child in children(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def _prepare_in_background(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gristmill.cli", "prepare", *args], **popen)


def test_a_killed_worker_is_named_and_the_rerun_finishes(big_source, tmp_path):  # noqa: F811
    out, clean = tmp_path / "ds", tmp_path / "clean"
    args = [str(big_source), "--workers", "2", "--task-bytes", "500000", "--no-progress"]
    proc = _prepare_in_background([*args, "-o", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_workers(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    while not any((out / TASKS_DIR).glob("*-record.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim = _workers(proc.pid)[0]
    # As if it died writing a shard (whether it does depends on the moment).
    (out / "train" / f"00000-99999.tokens.tmp-{victim}").write_bytes(b"part of a shard")
    os.kill(victim, signal.SIGKILL)  # as the out-of-memory killer does
    stderr = proc.communicate(timeout=120)[1]
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    line = _error_line(result)
    assert line == (
        f"gristmill: error: worker process {victim} was killed by SIGKILL, often the "
        "out-of-memory killer: run the same command again with fewer --workers or a smaller "
        "--task-bytes (finished tasks are kept)"
    )
    assert _temporary_files(out) == []  # not even the killed worker's
    assert run_gristmill("prepare", *args, "-o", str(out)).returncode == 0
    assert run_gristmill("prepare", *args, "-o", str(clean)).returncode == 0
    assert tree_bytes(out) == tree_bytes(clean)


def test_workers_exit_when_the_main_process_is_killed(big_source, tmp_path):  # noqa: F811
    # `gristmill prepare ... | tee log`: the pipe ends only when every holder of it has exited.
    args = [str(big_source), "--workers", "2", "--task-bytes", "500000", "--no-progress"]
    out = tmp_path / "ds"
    proc = _prepare_in_background([*args, "-o", str(out)], stdout=subprocess.PIPE)
    # Once they run tasks (one still starting exits as soon as it has started).
    deadline = time.monotonic() + 120
    while not any((out / TASKS_DIR).glob("*-record.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    kill_when(proc, lambda: True)  # the main process only
    died = time.monotonic()
    while any(alive(pid) for pid in workers) and time.monotonic() < died + 2:
        time.sleep(0.01)
    assert [pid for pid in workers if alive(pid)] == []
    os.set_blocking(proc.stdout.fileno(), False)
    while proc.stdout.read() is None and time.monotonic() < died + 5:  # None: open, nothing yet
        time.sleep(0.01)
    assert proc.stdout.read() == b""  # the end of the pipe: nobody holds it any more


ORPHAN = """
import os, subprocess, sys, time
watched = (
    "import os, threading, time\\n"
    "from gristmill_local_executor import _watch_parent\\n"
    "threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()\\n"
    "print(os.getpid(), flush=True)\\n"
    "time.sleep(120)\\n"
)
child = subprocess.Popen([sys.executable, "-c", watched], stdout=subprocess.PIPE)
print(child.stdout.readline().decode().strip(), flush=True)
time.sleep(120)
"""


def test_the_portable_watch_ends_a_worker_whose_parent_died():
    # Where PR_SET_PDEATHSIG does not exist (macOS), a thread of the worker watches its parent.
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    kill_when(parent, lambda: True)
    died = time.monotonic()
    while alive(worker) and time.monotonic() < died + 2:
        time.sleep(0.01)
    assert not alive(worker)
