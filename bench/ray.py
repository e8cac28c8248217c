"""``gristmill prepare`` throughput with the local executor and with Ray, on one input, in one run.

    python bench/ray.py [--corpus PATH] [--tokenizer SPEC] [--engine auto] [--size-mb MB]
                        [--task-bytes 4194304] [--work /tmp/gristmill-bench/ray] [--json FILE]

Four rows, each a ``gristmill.prepare(..., normalize=False)`` of the same input into a fresh
directory, timed from the call to its return: ``local`` with 1 worker (in this process) and 2
workers (a pool of spawned processes), then ``ray`` with 1 and 2 workers, each on a Ray of that
many CPUs started for the row (``ray.init(address="local", num_cpus=N)``) and shut down after it.
Ray's start-up is timed on its own and not counted in the row's seconds: a cluster pays it once,
not per dataset. The first task on each new worker (a Ray worker or a spawned process) still pays
its imports and its tokenizer load inside the row, as the local pool does. ``local`` with 1 worker
runs in this process, where the tokenizer keeps its own thread pool (``--engine hf`` batches over
every core); every other row encodes on one thread per worker.

``--engine hf`` (the ``tokenizers`` library) makes a CPU-bound job where the worker count shows;
with ``auto`` a fast engine leaves little but start-up and I/O on a corpus this size.

Defaults: bench/prepare.py's half corpus (/tmp/gristmill-bench/corpus-150mb-half.jsonl: 75 MB
of Python sources as ``{"text": ...}`` lines; --size-mb takes a prefix of whole lines) and its
byte-level BPE (/tmp/gristmill-bench/tokenizer.json), when they exist; else ``sample:stdlib`` and
the ``byte`` tokenizer. --task-bytes is smaller than prepare's default (16 MiB) so that 2 workers
get enough tasks to balance. Every row must write the same dataset (the manifest's fingerprint):
the table says so. Needs Ray: pip install 'gristmill[ray]'.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import versions  # bench/common.py, beside this script

# This file is named ray.py: with its folder off the path, `import ray` finds Ray, not itself.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

BENCH = Path("/tmp/gristmill-bench")
ROWS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


def prefix(corpus: Path, size_mb: float, work: Path) -> Path:
    """The first ``size_mb`` MB of ``corpus``, whole lines, cached under ``work``."""
    limit = int(size_mb * 1e6)
    if corpus.stat().st_size <= limit:
        return corpus
    path = work / f"{corpus.stem}-{size_mb:g}mb.jsonl"
    if not path.exists():
        written = 0
        tmp = path.with_suffix(".tmp")
        with open(corpus, "rb") as src, open(tmp, "wb") as dst:
            for line in src:
                if written + len(line) > limit:
                    break
                dst.write(line)
                written += len(line)
        os.replace(tmp, path)
    return path


def run(source: str, out: Path, executor: str, workers: int, args: argparse.Namespace) -> dict:
    import gristmill

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    manifest = gristmill.prepare(
        source,
        out,
        tokenizer=args.tokenizer,
        engine=args.engine,
        normalize=False,
        task_bytes=args.task_bytes,
        workers=workers,
        executor=executor,
        progress=False,
    )
    seconds = time.perf_counter() - started
    splits = manifest["splits"].values()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "documents": sum(s["num_documents"] for s in splits),
        "tokens": sum(s["num_tokens"] for s in splits),
        "fingerprint": manifest["fingerprint"],
    }


def count_tasks(source: str, task_bytes: int) -> int:
    """How many tasks prepare cuts the input into (from its size alone)."""
    from gristmill.ingest.plan import plan_chunks
    from gristmill.ingest.sources import open_sources
    from gristmill.plugin.manager import get_manager

    opened = open_sources([source], get_manager())
    return len(plan_chunks(enumerate(opened), task_bytes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    half = BENCH / "corpus-150mb-half.jsonl"
    parser.add_argument("--corpus", default=str(half) if half.exists() else "sample:stdlib")
    bpe = BENCH / "tokenizer.json"
    parser.add_argument("--tokenizer", default=str(bpe) if bpe.exists() else "byte")
    parser.add_argument("--engine", default="auto", help="the tokenizer's engine (default auto)")
    parser.add_argument("--size-mb", type=float, help="only this prefix of a file --corpus")
    parser.add_argument("--task-bytes", type=int, default=4 << 20)
    parser.add_argument("--work", type=Path, default=BENCH / "ray")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        sys.exit("bench/ray.py needs Ray: pip install 'gristmill[ray]'")

    whole = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.corpus
    if Path(source).is_file():
        if args.size_mb:
            source = str(prefix(Path(source), args.size_mb, args.work))
        print(f"input: {source} ({Path(source).stat().st_size / 1e6:.1f} MB)")
    else:
        print(f"input: {source}")
    print(f"tokenizer: {args.tokenizer} (engine {args.engine}); task bytes {args.task_bytes:,}")
    load = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    for executor, workers in ROWS:
        name = f"{executor}-{workers}"
        startup = None
        if executor == "ray":
            started = time.perf_counter()
            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
            startup = time.perf_counter() - started
        try:
            results[name] = run(source, args.work / name, executor, workers, args)
        finally:
            if executor == "ray":
                ray.shutdown()
        results[name]["startup"] = startup
        print(f"  {name}: {results[name]['seconds']:.1f} s", file=sys.stderr)

    base = results["local-1"]
    print()
    print(
        "| executor | workers | documents/s | M tokens/s | seconds | Ray start-up s | same dataset |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for executor, workers in ROWS:
        r = results[f"{executor}-{workers}"]
        startup = "–" if r["startup"] is None else f"{r['startup']:.1f}"
        same = "yes" if r["fingerprint"] == base["fingerprint"] else "**NO**"
        print(
            f"| {executor} | {workers} | {r['documents'] / r['seconds']:,.0f} | "
            f"{r['tokens'] / r['seconds'] / 1e6:.2f} | {r['seconds']:.1f} | {startup} | {same} |"
        )
    found = versions(("gristmill", "ray", "tokenizers", "numpy"))
    print(
        f"\n{base['documents']:,} documents, {base['tokens']:,} tokens, "
        f"{count_tasks(source, args.task_bytes)} tasks; "
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load:.1f} "
        f"before and {os.getloadavg()[0]:.1f} after; "
        + ", ".join(f"{k} {v}" for k, v in found.items() if v)
    )
    elapsed = time.perf_counter() - whole
    print(f"whole run: {elapsed:.0f} s")
    if args.json:
        saved = {"input": source, "tokenizer": args.tokenizer, "engine": args.engine}
        saved |= {"versions": found, "results": results, "seconds": elapsed}
        args.json.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
