"""Parallel prepare: deterministic tasks, any worker count gives the same bytes, and a run killed
at any moment finishes on the next run, redoing only unfinished tasks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.errors import DataError, DatasetError, OptionError
from gristmill.ingest.plan import plan_chunks
from gristmill.ingest.sources import open_sources
from gristmill.layout import INCOMPLETE, MANIFEST, TASKS_DIR
from gristmill.plugin.components import ExecutorType
from gristmill.plugin.manager import get_manager
from gristmill.store.claim import Claim
from tests.helpers import kill_when, run_gristmill, tree_bytes

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
        if i % 7 == 0:
            out.append({"prompt": f"Q{i}: {text}", "completion": f"A{i}", "metadata": {"k": i % 3}})
        else:
            out.append({"text": text, "metadata": {"lang": rng.choice(["en", "fr"])}})
    return out


@pytest.fixture
def corpus(tmp_path, write_jsonl) -> list[Path]:
    """Two JSONL files (text, and prompt/completion with duplicates and bad lines), and a few
    small files that tasks group together."""
    records = _records(3000)
    texts = [r for r in records if "text" in r]
    pairs = [r for r in records if "prompt" in r]
    lines: list = [*texts, *texts[:200]]  # exact duplicates, some in later tasks
    lines[500:500] = ["{not json", '{"text": 7}']
    files = [write_jsonl(lines, "texts.jsonl"), write_jsonl(pairs * 2, "pairs.jsonl")]
    small = tmp_path / "small"
    small.mkdir()
    for i in range(5):
        path = small / f"s{i}.jsonl"
        path.write_text("".join(json.dumps({"text": f"small {i} {j}"}) + "\n" for j in range(9)))
    return [*files, small]


OPTIONS = dict(
    task_bytes=20_000,
    tokens_per_shard=5_000,
    val_fraction=0.2,
    dedup=True,
    on_error="skip",
    progress=False,
)


def _output(out: Path) -> dict[str, bytes]:
    files = tree_bytes(out)
    rejects = out.with_name(f"{out.name}.rejects.jsonl")
    files["../rejects"] = rejects.read_bytes()
    return files


def _duplicates(files: list[Path]) -> int:
    """Records whose text (or prompt and completion) an earlier record already had."""
    keys = []
    for path in files:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record.get("text", ""), str):
                keys.append((record.get("text"), record.get("prompt"), record.get("completion")))
    return len(keys) - len(set(keys))


def test_any_worker_count_writes_the_same_bytes(corpus, tmp_path):
    outputs = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"w{workers}"
        manifest = gristmill.prepare(corpus, out, workers=workers, **OPTIONS)
        outputs[workers] = _output(out)
    assert outputs[1] == outputs[2] == outputs[4]
    # The run was really cut into many tasks and really deduplicated across them.
    shards = manifest["splits"]["train"]["shards"]
    assert len({entry["tokens"]["path"].split("-")[0] for entry in shards}) > 10
    assert manifest["provenance"]["duplicates"] == _duplicates(corpus[:2])
    assert manifest["provenance"]["skipped"] == {"malformed-json": 1, "wrong-type:text": 1}
    ds = gristmill.open_dataset(tmp_path / "w2", packer="none")
    assert len(ds) == manifest["splits"]["train"]["num_documents"]
    assert (
        not (tmp_path / "w2" / TASKS_DIR).exists() and not (tmp_path / "w2" / INCOMPLETE).exists()
    )


def test_documents_keep_the_input_order_across_tasks(tmp_path, write_jsonl):
    texts = [f"document number {i:05d}" for i in range(4000)]
    src = write_jsonl([{"text": t} for t in texts])
    out = tmp_path / "out"
    gristmill.prepare(src, out, workers=2, task_bytes=10_000, progress=False)
    ds = gristmill.open_dataset(out, packer="none")
    decoded = [ds.tokenizer.decode(ds.documents.document(i)[0]) for i in range(len(ds))]
    assert decoded == [f"{t}<|endoftext|>" for t in texts]
    manifest = ds.manifest
    assert manifest["provenance"]["sources"][0]["records"] == 4000
    assert len(manifest["splits"]["train"]["shards"]) == 14  # 140 kB in 10 kB tasks


def test_the_task_plan_depends_on_the_input_only(corpus):
    manager = get_manager()
    opened = list(enumerate(open_sources(corpus, manager)))
    plan = plan_chunks(opened, 20_000)
    again = plan_chunks(list(enumerate(open_sources(corpus, manager))), 20_000)
    assert [[(i, repr(vars(p))) for i, p in t.parts] for t in plan] == [
        [(i, repr(vars(p))) for i, p in t.parts] for t in again
    ]
    sizes = [os.path.getsize(p) for p in corpus[:2]]
    assert len(plan) >= sum(sizes) // 20_000
    # The five small files (about 150 bytes each) share one task.
    last = plan[-1]
    assert [i for i, _ in last.parts][-5:] == [2, 3, 4, 5, 6]
    assert len({i for t in plan for i, _ in t.parts}) == len(opened)


def test_a_bad_record_in_a_worker_is_reported_with_its_line(tmp_path, write_jsonl):
    lines = [{"text": f"record {i}"} for i in range(3000)]
    lines[2500] = {"text": None}
    src = write_jsonl(lines)
    with pytest.raises(DataError, match=r"data\.jsonl:2501: field 'text'") as caught:
        gristmill.prepare(src, tmp_path / "out", workers=2, task_bytes=5_000, progress=False)
    assert caught.value.where.endswith("data.jsonl:2501") and caught.value.field == "text"
    assert (tmp_path / "out" / INCOMPLETE).exists() and not (tmp_path / "out" / MANIFEST).exists()


@pytest.fixture
def big_source(tmp_path, write_jsonl) -> Path:
    rng = random.Random(1)
    records = [
        {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 400)))}
        for _ in range(12_000)
    ]
    return write_jsonl([*records, *records[:3000]], "big.jsonl")  # ~20 MB, with duplicates


def _records_done(out: Path) -> int:
    return len(list((out / TASKS_DIR).glob("*-record.json")))


@pytest.mark.parametrize("when", ["first-shard", "some-tasks", "most-tasks"])
def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_result(
    big_source, tmp_path, when
):
    args = [str(big_source), "--workers", "2", "--task-bytes", "500000", "--dedup"]
    args += ["--val-fraction", "0.1", "--tokens-per-shard", "200000", "--no-progress"]
    out, clean = tmp_path / "killed", tmp_path / "clean"
    assert run_gristmill("prepare", *args, "-o", str(clean)).returncode == 0
    tasks = len({p.name.split("-")[0] for p in clean.glob("*/*.tokens")})
    ready = {
        "first-shard": lambda: any(out.glob("train/*.tokens")),
        "some-tasks": lambda: _records_done(out) >= 3,
        "most-tasks": lambda: _records_done(out) >= tasks * 2 // 3,
    }[when]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gristmill.cli", "prepare", *args, "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, to kill the workers with it
    )
    kill_when(proc, ready, group=True)  # the run and its workers: no chance to clean up
    assert proc.returncode == -signal.SIGKILL
    assert (out / INCOMPLETE).exists() and not (out / MANIFEST).exists()
    done = _records_done(out)
    with pytest.raises(DatasetError, match="incomplete"):
        gristmill.open_dataset(out)

    result = run_gristmill("prepare", *args, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"resuming an unfinished prepare: {done:,} of" in result.stderr
    assert tree_bytes(out) == tree_bytes(clean)


def test_after_a_kill_a_changed_config_or_input_is_refused_until_overwrite(big_source, tmp_path):
    out = tmp_path / "out"
    args = [str(big_source), "-o", str(out), "--workers", "2", "--task-bytes", "500000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gristmill.cli", "prepare", *args, "--no-progress"],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kill_when(proc, lambda: _records_done(out) >= 1, group=True)
    before = tree_bytes(out)
    options = dict(workers=2, task_bytes=500_000, progress=False)
    with pytest.raises(DatasetError, match=r"unfinished prepare of other sources or settings"):
        gristmill.prepare(big_source, out, seed=1, **options)
    with open(big_source, "a") as f:
        f.write('{"text": "one more"}\n')
    with pytest.raises(DatasetError, match=r"run that command again .* or pass --overwrite"):
        gristmill.prepare(big_source, out, **options)
    assert tree_bytes(out) == before  # nothing of the unfinished run was touched
    manifest = gristmill.prepare(big_source, out, overwrite=True, **options)
    assert manifest["splits"]["train"]["num_documents"] == 15_001
    result = run_gristmill("prepare", *args, "--seed", "3")
    assert result.returncode == 2 and "already holds a dataset" in result.stderr


def test_after_a_failure_the_same_command_resumes_and_another_starts_over(
    tmp_path, write_jsonl, caplog
):
    src = write_jsonl([*({"text": f"record {i}"} for i in range(3000)), "{broken"])
    out = tmp_path / "out"
    for _ in range(2):  # the same command resumes, and stops at the same record
        with pytest.raises(DataError, match=r"data\.jsonl:3001: malformed JSON"):
            gristmill.prepare(src, out, task_bytes=5_000, progress=False)
        assert (out / INCOMPLETE).exists()
    caplog.set_level("INFO", logger="gristmill")
    manifest = gristmill.prepare(src, out, task_bytes=5_000, on_error="skip", progress=False)
    assert "an earlier prepare failed (" in caplog.text and "starting over" in caplog.text
    assert manifest["provenance"]["skipped"] == {"malformed-json": 1}
    assert manifest["splits"]["train"]["num_documents"] == 3000


def test_two_prepares_into_one_directory_are_refused(tmp_path, write_jsonl):
    src = write_jsonl([{"text": "x"}])
    out = tmp_path / "out"
    holder = Claim(out, "a-run-in-progress", overwrite=False)  # as a live prepare holds it
    try:
        with pytest.raises(
            DatasetError, match=rf"another gristmill prepare \(process {os.getpid()}\)"
        ):
            gristmill.prepare(src, out, progress=False)
        with pytest.raises(DatasetError, match="another gristmill prepare"):
            gristmill.prepare(src, out, overwrite=True, progress=False)
    finally:
        holder.release()
    # Once the holder is gone (killed), its unfinished run belongs to other settings.
    with pytest.raises(DatasetError, match="unfinished prepare of other sources"):
        gristmill.prepare(src, out, progress=False)
    gristmill.prepare(src, out, overwrite=True, progress=False)
    assert gristmill.open_dataset(out).manifest["splits"]["train"]["num_documents"] == 1


def test_bad_parallel_options_are_clear(tmp_path, write_jsonl):
    src = write_jsonl([{"text": "x"}])
    with pytest.raises(OptionError, match="workers must be a positive integer, got 0"):
        gristmill.prepare(src, tmp_path / "a", workers=0, progress=False)
    with pytest.raises(OptionError, match="task_bytes must be a positive integer, got 0"):
        gristmill.prepare(src, tmp_path / "b", task_bytes=0, progress=False)
    with pytest.raises(
        DataError, match=r"the byte tokenizer has no engine 'fast'; choose from auto"
    ):
        gristmill.prepare(src, tmp_path / "c", engine="fast", progress=False)
    with pytest.raises(gristmill.GristmillError, match="no executor named 'moon'"):
        gristmill.prepare(src, tmp_path / "d", executor="moon", progress=False)
    assert not any(tmp_path.glob("[abcd]"))


def test_a_script_without_a_main_guard_runs_once(tmp_path, write_jsonl):
    # Spawned workers must not re-run the caller's script (nor need a file to re-run: stdin).
    src = write_jsonl([{"text": f"record {i}"} for i in range(3000)])
    script = f"""
import sys
import gristmill
with open({str(tmp_path / "runs.txt")!r}, "a") as f:
    f.write("ran\\n")
gristmill.prepare({str(src)!r}, sys.argv[1], workers=2, task_bytes=5_000, progress=False)
"""
    (tmp_path / "script.py").write_text(script)
    for how, out in ((["script.py"], "a"), (["-"], "b")):
        result = subprocess.run(
            [sys.executable, *how, out],
            input=script,
            text=True,
            capture_output=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        manifest = gristmill.open_dataset(tmp_path / out).manifest
        assert len(manifest["splits"]["train"]["shards"]) > 5  # really several tasks
    assert (tmp_path / "runs.txt").read_text() == "ran\n" * 2


class _SkippingExecutor:
    """An executor that reports tasks done without running them (as one without a shared
    filesystem would look from here)."""

    def __init__(self, workers: int = 1, **options):
        pass

    def map(self, fn, tasks):
        for task in tasks:
            yield {"task": task.index, "documents": 0, "progress_shown": False}


def test_an_executor_that_loses_a_task_is_a_clear_error(tmp_path, write_jsonl, gristmill_register):
    record = ExecutorType(name="skipping", description="d", factory=_SkippingExecutor)
    plugin = type("P", (), {"gristmill_executors": staticmethod(hookimpl(lambda: [record]))})
    gristmill_register(plugin)
    src = write_jsonl([{"text": "x"}])
    with pytest.raises(DatasetError, match=r"task 0 reported success but left no record"):
        gristmill.prepare(src, tmp_path / "out", executor="skipping", progress=False)
