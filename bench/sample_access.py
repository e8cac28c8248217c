"""One sample at a time, side by side in one run: gristmill's ``ds[i]`` and a plain torch DataLoader
over the dataset, against a nanoGPT ``np.memmap`` slice and the memmap ceiling; and startup, from
``open_dataset`` to the first sample, as the same tokens are cut into 10 to 10,000 shards.

    python bench/sample_access.py [--work /tmp/gristmill-bench/loader]
                                  [--corpus-dir /tmp/gristmill-bench] [--samples 2000]
                                  [--rounds 7] [--shards 10,1000,10000] [--repeat 3]
                                  [--only samples,startup] [--json results.json]

The data are ``bench/loader.py``'s (its corpus, BPE and datasets, cached under --work and made
there when missing): about 80,000 documents of Python source, 39 M uint16 tokens, no loss masks.
A second dataset has them: the same documents as prompt/completion pairs (the prompt the first
line, the completion the rest; a document of one line completes ``# source``), prepared once
into WORK/masked-TAG.

Samples (table 1), in one process, the page cache warm (every token file read once first):
every row serves --samples random samples of ``seq_len`` 2048, the rows taking turns for
--rounds rounds; the table shows each row's median µs a sample, and × ceiling its ratio to the
ceiling's median of the same dataset.

- memmap ceiling: what a sample holds, from one ``np.memmap`` of every token (the shards' token
  files concatenated): a random 2048-token slice as int64 ``input_ids``, a copy as ``labels``,
  ``np.arange`` as ``position_ids``.
- nanoGPT memmap slice: ``get_batch``'s work for one sample, two int64 slices (inputs and
  targets one token apart).
- gristmill ``ds[i]``: ``open_dataset(DIR, seq_len=2048, packer=P)`` and ``ds[i]`` for random
  ``i`` (``first-fit``, ``none``, ``concat-chunk``); ``ds.batch`` of 8 for reference.
- plain DataLoader: ``torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)``, 0 workers,
  with ``collate_fn=list`` (the samples alone) and with each ``gristmill.torch.Collator`` below,
  against the ceiling's samples under the same DataLoader and torch's default collate.

Startup (table 2): for every shard count, the dataset without and with the offsets index
(``index/SPLIT.offsets``; the two are hard-linked copies of one dataset, differing in the
manifest and the index), each in a fresh child process: imports, then plugin discovery, then
``open_dataset(DIR, seq_len=2048, packer="first-fit")`` and ``ds[0]``, timed apart ("open →
first sample" excludes the first two). "cold" removes the pack-plan cache first, "cached"
keeps it; median of --repeat children, after one untimed child that stamps the files it checks
(a machine's first open hashes them). litdata and MosaicML streaming are measured as
``bench/loader.py`` does (dataset, DataLoader, first batch) where the interpreter has them.

Run it with the interpreter of the environment ``bench/loader.py`` documents, or any with
gristmill, numpy and torch (the DataLoader rows need torch; the peers need litdata and
mosaicml-streaming):

    python bench/sample_access.py --json /tmp/sample-access.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import environment, ints  # bench/common.py, beside this script
from loader import PACKAGES, SEQ_LEN, Bench, prepare, token_stream  # bench/loader.py

BATCH = 8
COLLATORS = {  # a row's label: the Collator's keywords
    "Collator(padding_free=True, block_mask=False)": {"padding_free": True, "block_mask": False},
    "Collator(block_mask=False)": {"block_mask": False},
}
CHILD_TIMEOUT_S = 300


# --- the data -------------------------------------------------------------------------------------


def masked(bench: Bench) -> Path:
    """The bench's documents as prompt/completion pairs (loss masks), prepared once."""
    out = bench.work / f"masked-{bench.tag}"
    pairs = bench.work / f"pairs-{bench.docs.stem}.jsonl"
    if not pairs.exists():
        tmp = pairs.with_suffix(".tmp")
        with open(bench.docs, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                text = json.loads(line)["text"]
                head, _, rest = text.partition("\n")
                if not (head.strip() and rest.strip()):  # one line: a prompt of its own
                    head, rest = "# source", text
                record = {"prompt": head, "completion": rest}
                dst.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, pairs)
    return prepare(pairs, bench.tokenizer, out, None)


def variant(path: Path, indexed: bool) -> Path:
    """A hard-linked copy of the dataset at ``path`` with its offsets index, or without one
    (the copy's manifest and index are files of its own; a gristmill from before the index
    cannot make the indexed copy: ImportError)."""
    out = path.with_name(f"{path.name}-{'indexed' if indexed else 'unindexed'}")
    if out.exists():
        return out
    has_index = "index" in json.loads((path / "manifest.json").read_text())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["cp", "-al", str(path), str(tmp)], check=True)
    shutil.rmtree(tmp / ".gristmill-plans", ignore_errors=True)
    if indexed != has_index:
        from gristmill.store.index import with_index
        from gristmill.store.manifest import INDEX, read_manifest, write_sealed

        manifest = read_manifest(tmp)
        if indexed:
            write_sealed(tmp, with_index(tmp, manifest))
        else:
            shutil.rmtree(tmp / "index")
            write_sealed(tmp, {k: v for k, v in manifest.items() if k != INDEX})
    os.replace(tmp, out)
    return out


# --- table 1: one sample at a time ------------------------------------------------------------------


def ceiling_rows(stream: Path, dtype: str) -> dict[str, Callable[[list[int]], None]]:
    """The memmap rows: each serves the windows starting at the given token positions."""
    import numpy as np

    data = np.memmap(stream, dtype=dtype, mode="r")
    data.sum()  # every page read once: the page cache is warm

    def ceiling(starts: list[int]) -> None:
        for i in starts:
            ids = data[i : i + SEQ_LEN].astype(np.int64)
            ids.copy(), np.arange(SEQ_LEN, dtype=np.int64)  # labels, positions

    def nanogpt(starts: list[int]) -> None:
        for i in starts:
            data[i : i + SEQ_LEN].astype(np.int64), data[i + 1 : i + 1 + SEQ_LEN].astype(np.int64)

    return {"memmap ceiling": ceiling, "nanoGPT memmap slice": nanogpt}


class CeilingSamples:
    """The ceiling's samples as a map-style dataset, for the DataLoader row beside gristmill's."""

    def __init__(self, stream: Path, dtype: str):
        import numpy as np

        self.data = np.memmap(stream, dtype=dtype, mode="r")
        self.np = np

    def __len__(self) -> int:
        return (len(self.data) - 1) // SEQ_LEN

    def __getitem__(self, k: int) -> dict[str, Any]:
        ids = self.data[k * SEQ_LEN : (k + 1) * SEQ_LEN].astype(self.np.int64)
        positions = self.np.arange(SEQ_LEN, dtype=self.np.int64)
        return {"input_ids": ids, "labels": ids.copy(), "position_ids": positions}


def gristmill_rows(path: Path, packers: list[str]) -> dict[str, Callable[[list[int]], None]]:
    """``ds[i]`` for each packer, and ``ds.batch`` of 8 (indices drawn below are fractions)."""
    import gristmill

    rows: dict[str, Callable[[list[int]], None]] = {}
    for packer in packers:
        ds = gristmill.open_dataset(path, seq_len=SEQ_LEN, packer=packer)
        for k in range(0, len(ds), 256):  # every shard read once: the page cache is warm
            ds.batch(range(k, min(k + 256, len(ds))))

        def one(picks: list[int], ds: Any = ds) -> None:
            for i in picks:
                ds[i % len(ds)]

        def eight(picks: list[int], ds: Any = ds) -> None:
            for k in range(0, len(picks), BATCH):
                ds.batch([i % len(ds) for i in picks[k : k + BATCH]])

        rows[f"gristmill ds[i], {packer}"] = one
        rows[f"gristmill ds.batch of {BATCH}, {packer}"] = eight
    return rows


def loader_rows(path: Path, stream: Path, dtype: str) -> dict[str, Callable[[list[int]], None]]:
    """Plain torch DataLoaders (batch 8, 0 workers, shuffled) over gristmill's dataset and over
    the ceiling's samples, each taking as many samples as the picks."""
    try:
        import torch
    except ImportError:
        return {}
    import gristmill
    from gristmill.torch import Collator

    ds = gristmill.open_dataset(path, seq_len=SEQ_LEN, packer="first-fit")
    made: dict[str, Any] = {"list": list, **{k: Collator(**v) for k, v in COLLATORS.items()}}
    loaders = {
        f"plain DataLoader, first-fit, collate_fn={name}": torch.utils.data.DataLoader(
            ds, batch_size=BATCH, shuffle=True, collate_fn=collate
        )
        for name, collate in made.items()
    }
    loaders["memmap ceiling samples, plain DataLoader, default collate"] = (
        torch.utils.data.DataLoader(CeilingSamples(stream, dtype), batch_size=BATCH, shuffle=True)
    )

    def run(loader: Any) -> Callable[[list[int]], None]:
        def take(picks: list[int]) -> None:
            batches = iter(loader)
            for _ in range(len(picks) // BATCH):
                next(batches)

        return take

    return {name: run(loader) for name, loader in loaders.items()}


def time_rows(
    rows: dict[str, Callable[[list[int]], None]], samples: int, rounds: int, span: int
) -> dict[str, list[float]]:
    """µs a sample of every row, round after round, the rows taking turns."""
    import random

    rng = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, serve in rows.items():
            picks = [rng.randrange(span) for _ in range(samples)]
            began = time.perf_counter()
            serve(picks)
            times[name].append((time.perf_counter() - began) / samples * 1e6)
    return times


def samples_table(bench: Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Table 1 for the plain dataset and the masked one."""
    import gc

    found = []
    for label, path, packers in (
        ("no loss masks", bench.gristmill(10), ["first-fit", "none", "concat-chunk"]),
        ("loss masks", masked(bench), ["first-fit", "none"]),
    ):
        stream, dtype = token_stream(path, bench.work)
        rows = {
            **ceiling_rows(stream, dtype),
            **gristmill_rows(path, packers),
            **(loader_rows(path, stream, dtype) if label == "no loss masks" else {}),
        }
        gc.collect()  # what the imports left owing, not inside a timed row
        span = os.path.getsize(stream) // 2 - SEQ_LEN - 1
        times = time_rows(rows, args.samples, args.rounds, span)
        ceiling = statistics.median(times["memmap ceiling"])
        for name, runs in times.items():
            median = statistics.median(runs)
            found.append(
                {
                    "data": label,
                    "row": name,
                    "us": median,
                    "ceiling": median / ceiling,
                    "runs": runs,
                }
            )
    return found


# --- table 2: startup -------------------------------------------------------------------------------


def startup_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: imports (the read side's modules too), plugin discovery, open,
    the first sample, timed apart."""
    began = time.perf_counter()
    import gristmill
    from gristmill.plugin.manager import get_manager

    imported = time.perf_counter()
    get_manager()
    # The read side's modules, which the first open imports: the target excludes imports.
    import gristmill.serve.dataset
    import gristmill_memmap_shards.reader  # noqa: F401

    discovered = time.perf_counter()
    ds = gristmill.open_dataset(spec["path"], seq_len=SEQ_LEN, packer="first-fit")
    opened = time.perf_counter()
    ds[0]
    first = time.perf_counter()
    return {
        "import": imported - began,
        "plugins": discovered - imported,
        "open": opened - discovered,
        "first": first - opened,
        "startup": first - discovered,
    }


def peer_child(spec: dict[str, Any]) -> dict[str, Any]:
    """A peer's dataset, DataLoader and first batch, as ``bench/loader.py`` measures them."""
    from loader import measure

    return measure({**spec, "seconds": 0})


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"over {CHILD_TIMEOUT_S} s"}
    found = [ln[7:] for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not found:
        tail = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()][-1:]
        return {"failed": f"exit {done.returncode}: {''.join(tail)[:160]}"}
    return json.loads(found[-1])


def median_child(spec: dict[str, Any], repeat: int, cold: Path | None) -> dict[str, Any]:
    """The child with the median startup of ``repeat`` (``cold``: the plans removed first)."""
    runs = []
    for _ in range(repeat):
        if cold is not None:
            shutil.rmtree(cold / ".gristmill-plans", ignore_errors=True)
        runs.append(run_child(spec))
    done = sorted((r for r in runs if "startup" in r), key=lambda r: r["startup"])
    return {**(done[len(done) // 2] if done else runs[-1]), "runs": runs}


def startup_table(bench: Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for n in args.shards:
        base = bench.gristmill(n)
        shards = len(json.loads((base / "manifest.json").read_text())["splits"]["train"]["shards"])
        for indexed in (False, True):
            try:
                path = variant(base, indexed)
            except ImportError as exc:  # a gristmill without the offsets index
                rows.append({"shards": shards, "row": "indexed", "result": {"skipped": str(exc)}})
                continue
            spec = {"system": "startup", "path": str(path)}
            run_child(spec)  # stamps every file it checks, as a machine's first open would
            for plan in ("cold", "cached"):
                got = median_child(spec, args.repeat, path if plan == "cold" else None)
                label = f"gristmill {'with' if indexed else 'without'} index, plan {plan}"
                rows.append({"shards": shards, "row": label, "result": got})
                print(f"  {shards:,} shards, {label}: {got.get('startup', got)}", flush=True)
        for kind in ("litdata", "streaming"):
            if installed(kind):
                got = run_child({"system": kind, "path": str(bench.peer(kind, n)), "workers": 0})
            else:
                got = {"skipped": f"{kind} not installed in this interpreter"}
            rows.append({"shards": shards, "row": kind, "result": got})
    return rows


def installed(kind: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(kind) is not None


# --- output -----------------------------------------------------------------------------------------


def print_samples(rows: list[dict[str, Any]]) -> None:
    print("\n| data | row | µs a sample | samples/s | × memmap ceiling |\n|---|---|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['data']} | {r['row']} | {r['us']:,.1f} | {1e6 / r['us']:,.0f} | "
            f"{r['ceiling']:.2f}× |"
        )


def print_startup(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| shards | loader | import s | plugins s | open s | first sample s | "
        "open → first sample s |\n|--:|---|--:|--:|--:|--:|--:|"
    )
    for r in rows:
        got = r["result"]
        if "startup" not in got:
            why = got.get("skipped") or got.get("failed") or got
            print(f"| {r['shards']:,} | {r['row']} | {why} | | | | |")
            continue
        print(
            f"| {r['shards']:,} | {r['row']} | {got['import']:.2f} | {got.get('plugins', 0):.3f} "
            f"| {got['open']:.3f} | {got['first']:.4f} | **{got['startup']:.3f}** |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-bench/loader"))
    parser.add_argument("--corpus-dir", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--samples", type=int, default=2000, help="samples a row a round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every row (median)")
    parser.add_argument("--shards", type=ints, default=[10, 1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=3, help="children per startup row")
    parser.add_argument("--only", default="samples,startup", help="comma-separated tables")
    parser.add_argument("--json", type=Path, help="also save the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child = startup_child if spec["system"] == "startup" else peer_child
        print("RESULT " + json.dumps(child(spec)), flush=True)
        os._exit(0)
    load = os.getloadavg()[0]
    bench = Bench(args)
    only = set(args.only.split(","))
    samples = samples_table(bench, args) if "samples" in only else []
    starts = startup_table(bench, args) if "startup" in only else []
    if samples:
        print(f"\n### One sample at a time ({SEQ_LEN} tokens), median of {args.rounds} rounds")
        print_samples(samples)
    if starts:
        print(f"\n### Startup: open_dataset → ds[0], median of {args.repeat} children")
        print_startup(starts)
    print("\n" + environment(load, PACKAGES))
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "startup": starts}, indent=1))


if __name__ == "__main__":
    main()
