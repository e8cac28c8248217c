"""The ray executor: the local executor's bytes, its errors, and runs that another executor finishes.

Run in the tox env ``ray`` (``tox -e ray``); elsewhere the tests that need Ray are skipped, and
the ones that prove the plugin lists and fails cleanly without it still run. Starting Ray takes
seconds, so one local instance (2 CPUs) serves the module: in-process runs reuse it, and
``gristmill prepare`` processes reach it with ``--ray-address``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gristmill
from gristmill.errors import DataError, MissingDependencyError
from gristmill.layout import INCOMPLETE, MANIFEST, TASKS_DIR
from gristmill_ray_executor import RayExecutor
from tests.helpers import run_gristmill, tree_bytes

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
# Small tasks and shards: many tasks, each writing several shards.
SMALL = ["--task-bytes", "8000", "--tokens-per-shard", "3000", "--no-progress"]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray of 2 CPUs, started once for the module; its address."""
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    """Five JSONL files, of text or prompt/completion records with metadata: ~60 tasks."""
    rng = random.Random(0)
    paths = []
    for f in range(5):
        path = tmp_path / f"part{f}.jsonl"
        with open(path, "w", encoding="utf-8") as out:
            for i in range(1000):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
                record = (
                    {"prompt": f"Q{i}: {text}", "completion": f"A{i}", "metadata": {"k": i % 3}}
                    if f % 2
                    else {"text": text, "metadata": {"lang": rng.choice(["en", "fr"])}}
                )
                out.write(json.dumps(record) + "\n")
        paths.append(path)
    return paths


def _prepare(sources: list[Path], out: Path, *options: str, **env: str):
    result = run_gristmill("prepare", *map(str, sources), "-o", str(out), *options, env=env)
    assert result.returncode == 0, result.stderr
    return result


def _listed_files(out: Path) -> tuple[str, dict[str, bytes]]:
    """The manifest's fingerprint and every file its splits list, by path."""
    manifest = json.loads((out / MANIFEST).read_text())
    files = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            for value in shard.values():
                if isinstance(value, dict) and "path" in value:
                    files[value["path"]] = (out / value["path"]).read_bytes()
    return manifest["fingerprint"], files


def test_ray_output_is_byte_identical_to_local(tmp_path, corpus, ray_address):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    options = [*SMALL, "--workers", "2", "--val-fraction", "0.1", "--dedup"]
    _prepare(corpus, local, *options)
    _prepare(corpus, on_ray, *options, "--executor", "ray", "--ray-address", ray_address)
    fingerprint, files = _listed_files(on_ray)
    assert (fingerprint, files) == _listed_files(local)
    assert len({name.split("-")[0] for name in files}) > 20  # shards of many tasks
    assert tree_bytes(on_ray) == tree_bytes(local)  # the manifest and the tokenizer too


def test_in_process_runs_reuse_the_callers_ray_and_leave_it_running(tmp_path, corpus, ray_address):
    import ray

    local = gristmill.prepare(corpus, tmp_path / "local", task_bytes=8000, progress=False)
    on_ray = gristmill.prepare(
        corpus, tmp_path / "ray", task_bytes=8000, executor="ray", workers=1, progress=False
    )
    assert on_ray["fingerprint"] == local["fingerprint"]
    assert ray.is_initialized()  # the caller's Ray: not this executor's to shut down


def test_a_bad_record_fails_with_the_local_executors_error(tmp_path, corpus, ray_address):
    lines = corpus[3].read_text().splitlines()
    lines[499] = "{not json"
    corpus[3].write_text("\n".join(lines) + "\n")
    errors = []
    for executor in ("local", "ray"):
        with pytest.raises(DataError) as caught:
            gristmill.prepare(
                corpus,
                tmp_path / executor,
                task_bytes=8000,
                workers=2,
                executor=executor,
                progress=False,
            )
        errors.append(caught.value)
    local, on_ray = errors
    assert type(on_ray) is type(local) and str(on_ray) == str(local)
    assert str(on_ray).startswith(f"{corpus[3]}:500: malformed JSON")
    assert on_ray.__cause__ is None  # no Ray wrapper between the user and the file and line
    assert (tmp_path / "ray" / INCOMPLETE).exists() and not (tmp_path / "ray" / MANIFEST).exists()

    # The command line says the same, and nothing else.
    out = tmp_path / "cli"
    result = run_gristmill(
        "prepare", *map(str, corpus), "-o", str(out), *SMALL, "--ray-address", ray_address
    )
    assert result.returncode == 2
    assert f"gristmill: error: {local}" in result.stderr
    assert "Traceback" not in result.stderr and "RayTaskError" not in result.stderr


@pytest.mark.xfail(
    reason="known defect, open: a prepare with --executor ray that starts its own Ray can let "
    "every Ctrl-C go by and finish with exit 0 (2 of the last 3 CI runs; passes alone here)",
    strict=False,
)
def test_an_interrupted_ray_run_is_finished_by_the_local_executor(tmp_path, corpus, ray_address):
    out, clean = tmp_path / "interrupted", tmp_path / "clean"
    # One Ray worker and about 240 small tasks: the run lasts long enough after its first task
    # for a Ctrl-C to land (one that lands only in the final merge may wait for it: exit 0).
    small = [*SMALL, "--task-bytes", "2000"]
    args = [*map(str, corpus), "-o", str(out), *small, "--workers", "1"]
    # No --ray-address and no RAY_ADDRESS: the run starts its own Ray, and shuts it down.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gristmill.cli", "prepare", *args, "--executor", "ray"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob(f"{TASKS_DIR}/*-record.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    # Ctrl-C: no new task starts, and the executor stops Ray. Ray's driver can let a Ctrl-C
    # that lands inside its own wait go by, and the few tasks left can finish within a second
    # or two: a user presses it again until the run stops, and it must then stop as on the first.
    for _ in range(240):
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        pytest.fail("prepare --executor ray went on after two minutes of Ctrl-C")
    assert proc.returncode == 130, stderr
    assert "gristmill: interrupted" in stderr
    assert (out / INCOMPLETE).exists() and not (out / MANIFEST).exists()

    resumed = _prepare(corpus, out, *small, "--workers", "2")
    done = int(resumed.stderr.split("resuming an unfinished prepare: ")[1].split()[0])
    assert done >= 1  # tasks the Ray run finished were kept, not redone
    _prepare(corpus, clean, *small)
    assert tree_bytes(out) == tree_bytes(clean)


# `gristmill plugins --json` in a process where Ray cannot be imported, installed or not.
LIST_WITHOUT_RAY = """
import sys
sys.modules["ray"] = None
from gristmill.cli import main
sys.exit(main(["plugins", "--json"]))
"""


def test_without_ray_the_plugin_lists_and_fails_with_the_extra(monkeypatch):
    result = subprocess.run(
        [sys.executable, "-c", LIST_WITHOUT_RAY], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["ray"]["status"] == "ok"
    assert plugins["ray"]["components"] == {"executors": ["ray"]}

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'gristmill\[ray\]'"):
        next(RayExecutor(workers=2).map(str, [1, 2]))


def test_a_wrong_address_or_executor_is_a_clear_error(tmp_path, corpus):
    args = ["prepare", str(corpus[0]), "-o", str(tmp_path / "out"), "--no-progress"]
    result = run_gristmill(*args, "--executor", "local", "--ray-address", "127.0.0.1:1")
    assert result.returncode == 2
    assert "gristmill: error: --ray-address needs --executor ray, not local" in result.stderr
    pytest.importorskip("ray")
    result = run_gristmill(*args, "--ray-address", "127.0.0.1:1")  # nothing listens on port 1
    assert result.returncode == 2
    assert "gristmill: error: ray: cannot connect to 127.0.0.1:1: " in result.stderr
