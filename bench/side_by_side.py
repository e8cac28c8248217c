"""Every target of issue 21 against the peers and the ceiling, side by side, in one run.

    /work/benchvenv/bin/python bench/side_by_side.py [--corpus-dir /tmp/gristmill-bench]
        [--prepare-mb 40] [--sft-mb 20] [--seconds 3] [--rounds 3] [--samples 2000]
        [--sample-rounds 5] [--shards 10,1000,10000] [--repeat 3] [--json results.json]

One corpus and one tokenizer for every table: ``bench/prepare.py``'s (the Python sources of this
interpreter's standard library and site-packages, 150 MB of JSON Lines, and its byte-level BPE,
vocabulary 32,000), cached in --corpus-dir, and ``bench/loader.py``'s documents cut from it
(cached in CORPUS_DIR/loader). Each table comes from the functions of the script named:

- Prepare, plain text (``bench/prepare.py``'s contenders and children): the first --prepare-mb
  MB of the corpus (whole lines), each contender in a fresh child, timed after its imports, its
  ids read back and hashed against the library's own. The ceiling: the read-parse-write floor.
- Prepare, SFT data: the first --sft-mb MB of ``bench/sample_access.py``'s prompt/completion
  pairs (each document's first line the prompt, the rest the completion); gristmill, the floor,
  and ``datasets.map`` tokenizing as TRL's ``SFTTrainer`` does (``peers.job_datasets_sft``).
- Loading (``bench/loader.py``'s children): batches of 8 × 2048 for --seconds, --rounds rounds
  (rows in turn, each row's median run), gristmill's default collator and its fastest
  (padding-free), against the memmap ceiling (nanoGPT's ``get_batch``), MosaicML streaming,
  litdata and Hugging Face ``datasets`` (``load_from_disk`` in torch format).
- One sample at a time (``bench/sample_access.py``'s rows, in this process): µs a random
  2048-token sample, median of --sample-rounds rounds of --samples samples.
- Startup (``bench/loader.py``'s): open → DataLoader → first batch at each shard count, median
  of --repeat children.
- Peak memory: the prepare and loading children's whole process trees (RSS summed over the
  processes, sampled every 50 ms, ``common.run_sampled``).

The machine is shared: ratios within this run are what to read.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import loader  # bench/loader.py, beside this script
import prepare
import sample_access
from common import environment, ints, versions

PACKAGES = (*prepare.PACKAGES, "psutil")
PLAIN = ("floor", "gristmill", "datasets", "litdata", "streaming", "megatron", "nanogpt")
LOADERS = ("streaming", "litdata", "datasets")
COLLATORS = {"Collator()": "default", "padding_free=True": "fastest"}
NO_SFT = {
    "litdata": "litdata `optimize` stores what a function yields; masking is the user's code",
    "streaming": "MosaicML streaming writes and reads samples; no tokenization or masking",
    "megatron": "Megatron's `preprocess_data.py` stores no loss masks; its SFT datasets "
    "(Megatron-Bridge `GPTSFTDataset`) tokenize JSONL as they load it",
    "nanogpt": "nanoGPT prepares plain text only",
}
MIB = 2**20
LOADING_NOTES = (
    "The memmap ceiling is nanoGPT's own loader (`get_batch`).",
    "The peers serve windows of the token stream as they stored it (uint16 for streaming and "
    "litdata, int64 tensors from datasets' torch format), no labels, positions or document "
    "boundaries; gristmill's samples carry int64 `input_ids`, `labels`, `position_ids` and "
    "`seq_lens`.",
    "² megatron-core's `GPTDataset` is built from a `GPTDatasetConfig` (blend, split, a "
    "tokenizer object) and writes its index files on first use; not run here.",
)


# --- data -----------------------------------------------------------------------------------------


def prefix(src: Path, dst: Path, size_mb: float) -> Path:
    """The first whole lines of ``src``, about ``size_mb`` MB, as ``dst`` (once)."""
    if dst.exists():
        return dst
    limit, written = int(size_mb * 1e6), 0
    with open(src, "rb") as f, open(dst.with_suffix(".tmp"), "wb") as out:
        for line in f:
            out.write(line)
            written += len(line)
            if written >= limit:
                break
    os.replace(dst.with_suffix(".tmp"), dst)
    return dst


def seed_corpus(corpus_dir: Path, work: Path, size_mb: float) -> None:
    """``prepare.build_corpus``'s cache in ``work`` made of the 150 MB corpus's first lines (and
    its tokenizer), so that ``prepare.Bench`` finds them."""
    work.mkdir(parents=True, exist_ok=True)
    full = prefix(corpus_dir / "corpus-150mb.jsonl", work / f"corpus-{size_mb:g}mb.jsonl", size_mb)
    meta_path = work / f"corpus-{size_mb:g}mb.json"
    if not (work / "tokenizer.json").exists():
        shutil.copy(corpus_dir / "tokenizer.json", work / "tokenizer.json")
    if meta_path.exists():
        return
    lines = full.read_bytes().splitlines(keepends=True)
    half = prefix(full, work / f"corpus-{size_mb:g}mb-half.jsonl", size_mb / 2)
    meta = {
        "sources": f"the first {size_mb:g} MB of {corpus_dir / 'corpus-150mb.jsonl'}",
        "bytes": full.stat().st_size,
        "documents": len(lines),
        "half_bytes": half.stat().st_size,
        "half_documents": len(half.read_bytes().splitlines()),
        "sha256": hashlib.sha256(full.read_bytes()).hexdigest(),
    }
    meta_path.write_text(json.dumps(meta, indent=1))


# --- prepare --------------------------------------------------------------------------------------


def prepare_plain(pb: prepare.Bench, notes: list[str]) -> dict[str, dict[str, Any]]:
    """Every plain-text contender on the prefix corpus, the reference ids made first."""
    if pb.reference is None:
        env = {"RAYON_NUM_THREADS": "2"}
        got = pb.run(prepare.Contender("reference", "", "encode", "", env=env))
        if pb.reference is None:
            sys.exit(f"the reference ids could not be made: {got}")
    rows = {c.name: c for c in prepare.contenders(notes) if c.name in PLAIN}
    results = {}
    for name in PLAIN:
        got = pb.run(rows[name])
        got["label"], got["what"] = rows[name].label, rows[name].what
        if "ordered" in got and pb.reference is not None:
            got["identical"] = prepare.verdict(pb.reference["full"], got)
        results[name] = got
    return results


def prepare_sft(pb: prepare.Bench, pairs: Path) -> dict[str, dict[str, Any]]:
    """gristmill, the floor (as many tokens as gristmill's documents) and TRL-style datasets on
    the prompt/completion pairs."""
    sb = copy.copy(pb)
    sb.full = sb.half = pairs
    sb.lengths, sb.reference = pb.work / f"lengths-{pairs.stem}.npy", None
    options = {"normalize": False, "workers": prepare.PROCS}
    mill = prepare.Contender("gristmill-sft", "", "gristmill", "", options=options)
    results = {"gristmill": sb.run(mill, keep=True)}
    import numpy as np

    out = sb.work / "out" / mill.name
    np.save(sb.lengths, np.concatenate(loader.task_lengths(out)))
    shutil.rmtree(out, ignore_errors=True)
    fields = {"fields": ["prompt", "completion"]}
    results["floor"] = sb.run(prepare.Contender("floor-sft", "", "floor", "", options=fields))
    results["datasets"] = sb.run(prepare.Contender("datasets-sft", "", "datasets-sft", ""))
    return results


# --- loading --------------------------------------------------------------------------------------


def loading_rows(lb: loader.Bench) -> list[dict[str, Any]]:
    """``loader.throughput_rows``' gristmill rows of the default and the fastest collator (first-fit),
    the ceiling's and the peers', and Hugging Face ``datasets``' beside them."""
    keep = {f"first-fit, {name}" for name in COLLATORS}
    rows = [
        r
        for r in loader.throughput_rows(lb, True)
        if r["system"] != "gristmill" or r["what"] in keep
    ]
    path = str(lb.peer("datasets", 10))
    for workers in (0, 2):
        spec = {"system": "datasets", "path": path, "workers": workers}
        rows.append({"system": "datasets", "what": "load_from_disk, torch format", "spec": spec})
    return rows


def run_loading(lb: loader.Bench, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for round_ in range(args.rounds):
        for r in rows:
            got = lb.run({**r["spec"], "seconds": args.seconds})
            r.setdefault("runs", []).append(got)
            rate = loader.rate({"result": got}, "tokens")
            shown = f"{rate / 1e6:.1f} M tokens/s" if rate else got
            print(
                f"  round {round_ + 1}: {r['system']}, {r['what']}, {r['spec']['workers']}: {shown}"
            )
    for r in rows:
        r["result"] = loader.median_rate(r["runs"])


def run_startup(lb: loader.Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``loader.startup_rows`` with ``datasets`` beside them, each the median of --repeat."""
    rows = loader.startup_rows(lb, args.shards, True)
    for n in args.shards:
        path = lb.peer("datasets", n)
        spec = {"system": "datasets", "path": str(path), "workers": 0}
        shards = loader.shard_count("datasets", path)
        rows.append({"target": n, "system": "datasets", "shards": shards, "spec": spec})
    for r in rows:
        runs = []
        for _ in range(args.repeat):
            if r["system"] == "gristmill cold":
                shutil.rmtree(Path(r["spec"]["path"]) / loader.PLANS_DIR, ignore_errors=True)
            runs.append(lb.run(r["spec"]))
        r["result"], r["runs"] = loader.median_of(runs), runs
        print(f"  {r['shards']:,} shards, {r['system']}: {r['result'].get('startup', r['result'])}")
    return rows


# --- one sample at a time -------------------------------------------------------------------------


def peer_sample_rows(lb: loader.Bench) -> dict[str, Any]:
    """``ds[i]`` of each peer's windows (10 shards), every file read once first."""
    import datasets
    from litdata import StreamingDataset, TokensLoader
    from peers import import_streaming

    base = import_streaming()
    made = {
        "litdata StreamingDataset[i] (TokensLoader)": StreamingDataset(
            str(lb.peer("litdata", 10) / "data"), item_loader=TokensLoader(block_size=2048)
        ),
        "streaming StreamingDataset[i]": base.StreamingDataset(
            local=str(lb.peer("streaming", 10)), batch_size=1
        ),
        "datasets ds[i] (numpy format)": datasets.load_from_disk(
            str(lb.peer("datasets", 10))
        ).with_format("numpy"),
    }
    for kind in LOADERS:
        for f in lb.peer(kind, 10).rglob("*"):
            if f.is_file():
                f.read_bytes()

    def serve(ds: Any) -> Any:
        def one(picks: list[int]) -> None:
            for i in picks:
                ds[i % len(ds)]

        return one

    return {name: serve(ds) for name, ds in made.items()}


def one_sample(lb: loader.Bench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """µs a sample: the ceiling's rows, gristmill's ``ds[i]`` (default packer ``none`` and
    first-fit) and the peers' ``ds[i]``, the rows in turn."""
    path = lb.gristmill(10)
    rows = {
        **sample_access.ceiling_rows(lb.stream, lb.dtype),
        **sample_access.gristmill_rows(path, ["none", "first-fit"]),
        **peer_sample_rows(lb),
    }
    gc.collect()
    span = os.path.getsize(lb.stream) // 2 - loader.SEQ_LEN - 1
    times = sample_access.time_rows(rows, args.samples, args.sample_rounds, span)
    ceiling = statistics.median(times["memmap ceiling"])
    return [
        {"row": name, "us": statistics.median(t), "ceiling": statistics.median(t) / ceiling}
        for name, t in times.items()
    ]


# --- tables ---------------------------------------------------------------------------------------


def mib(got: dict[str, Any], pss: bool = True) -> str:
    if not got.get("peak_rss"):
        return "–"
    text = f"{got['peak_rss'] / MIB:,.0f}"
    return text + (f" ({got['peak_pss'] / MIB:,.0f})" if pss and got.get("peak_pss") else "")


def why(got: dict[str, Any]) -> str:
    return str(got.get("skipped") or got.get("failed") or got)


def print_prepare(title: str, results: dict[str, dict[str, Any]], labels: dict[str, str]) -> None:
    """One prepare table: rate, ratio to the floor and gristmill's ratio to the row, memory."""
    floor, mill = prepare.rate(results.get("floor")), prepare.rate(results.get("gristmill"))
    print(f"\n### {title}\n")
    print("| tool | M tokens | seconds | M tokens/s | × ceiling | gristmill is × faster |", end="")
    print(" peak RSS (PSS) MiB | same ids |\n|---|--:|--:|--:|--:|--:|--:|---|")
    for name, label in labels.items():
        got = results.get(name)
        if got is None:
            print(f"| {label} | — | — | — | — | — | — | — |")
            continue
        r = prepare.rate(got)
        if r is None:
            print(f"| {label} | {why(got)} | | | | | | |")
            continue
        faster = f"{mill / r:.2f}" if mill and name != "floor" else "–"
        print(
            f"| {label} | {got['tokens'] / 1e6:.2f} | {got['seconds']:.2f} | {r / 1e6:.2f} | "
            f"{r / floor if floor else 0:.3f} | {faster} | {mib(got)} | "
            f"{got.get('identical', 'not compared')} |"
        )


def print_loading(rows: list[dict[str, Any]]) -> None:
    ceiling = next(loader.rate(r, "tokens") for r in rows if r["spec"]["system"] == "memmap")
    print("\n### Loading: batches of 8 × 2048 tokens\n")
    print(
        "| tool | samples, collator | workers | M tokens/s | × ceiling's time | startup s |", end=""
    )
    print(" peak RSS (PSS) MiB |\n|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        got, tokens = r["result"], loader.rate(r, "tokens")
        head = f"| {r['system']} | {r['what']} | {r['spec']['workers']} |"
        if not tokens:
            print(f"{head} {why(got)} | | | |")
            continue
        print(
            f"{head} {tokens / 1e6:.1f} | {ceiling / tokens:.2f}× | {got['startup']:.2f} | "
            f"{mib(got)} |"
        )
    print("| Megatron-style | — ² | | | | | |")
    for note in LOADING_NOTES:
        print(f"- {note}")


def print_samples(rows: list[dict[str, Any]]) -> None:
    print("\n### One sample at a time (2048 tokens, random)\n")
    print("| row | µs a sample | samples/s | × ceiling's time |\n|---|--:|--:|--:|")
    for r in rows:
        print(f"| {r['row']} | {r['us']:,.1f} | {1e6 / r['us']:,.0f} | {r['ceiling']:.2f}× |")


def print_startup(rows: list[dict[str, Any]], counts: list[int]) -> None:
    systems = ["gristmill cold", "gristmill warm", *LOADERS]
    print("\n### Startup: open → DataLoader → first batch (0 workers), seconds\n")
    print(
        "| shards asked | gristmill, plan computed | gristmill, plan cached | streaming | litdata "
        "| datasets |\n|--:|--:|--:|--:|--:|--:|"
    )
    for n in counts:
        cells = []
        for system in systems:
            r = next(r for r in rows if r["target"] == n and r["system"] == system)
            got = r["result"]
            cell = f"{got['startup']:.3f}" if "startup" in got else why(got)
            cells.append(cell + (f" ({r['shards']:,})" if r["shards"] != n else ""))
        print(f"| {n:,} | " + " | ".join(cells) + " |")


def print_memory(plain: dict, sft: dict, loading: list[dict[str, Any]]) -> None:
    """Peak RSS of each tool's children, from the tables above."""

    def load(system: str, workers: int) -> str:
        for r in loading:
            if r["system"] != system or r["spec"]["workers"] != workers:
                continue
            if system != "gristmill" or r["what"] == "first-fit, Collator()":
                return mib(r["result"])
        return "—"

    print("\n### Peak memory: RSS (PSS) of the whole process tree, MiB\n")
    print("| tool | prepare, plain | prepare, SFT | loading, 0 workers | loading, 2 workers |")
    print("|---|--:|--:|--:|--:|")
    names = {  # prepare's contender: the loading rows' system
        "gristmill": "gristmill",
        "datasets": "datasets",
        "litdata": "litdata",
        "streaming": "streaming",
        "megatron": "",
        "nanogpt": "memmap ceiling",
        "floor": "",
    }
    for name, system in names.items():
        cells = [mib(plain[name]) if name in plain else "—"]
        cells.append(mib(sft[name]) if name in sft else "—")
        cells += [load(system, w) for w in (0, 2)]
        print(
            f"| {name}{' / ' + system if system and system != name else ''} | "
            + " | ".join(cells)
            + " |"
        )


PLAIN_LABELS = {
    "floor": "ceiling: read-parse-write floor",
    "gristmill": "**gristmill** `prepare(workers=2)` (default engine)",
    "datasets": "HF `datasets` `load_dataset` + `map(num_proc=2)`",
    "litdata": "litdata `optimize(num_workers=2)`",
    "streaming": "MosaicML streaming `MDSWriter`, 2 processes",
    "megatron": "Megatron-style (`Pool(2)` + `IndexedDatasetBuilder`)",
    "nanogpt": "nanoGPT-style (`Pool(2)` + `np.memmap`)",
}
SFT_LABELS = {
    "floor": "ceiling: read-parse-write floor",
    "gristmill": "**gristmill** `prepare(workers=2)` (default engine, loss masks)",
    "datasets": "HF `datasets` `map(num_proc=2)`, TRL's prompt-completion tokenization",
    **{k: PLAIN_LABELS[k] + " ¹" for k in NO_SFT},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--prepare-mb", type=float, default=40, help="plain-text prepare corpus")
    parser.add_argument("--sft-mb", type=float, default=20, help="prompt/completion pairs")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds a loading row")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loading rows")
    parser.add_argument("--samples", type=int, default=2000, help="samples a row a round")
    parser.add_argument("--sample-rounds", type=int, default=5)
    parser.add_argument("--shards", type=ints, default=[10, 1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=3, help="children per startup cell")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args()
    started, load_start, notes = time.perf_counter(), os.getloadavg(), []
    corpus_dir = args.corpus_dir.resolve()
    lb = loader.Bench(argparse.Namespace(work=corpus_dir / "loader", corpus_dir=corpus_dir))
    side = corpus_dir / "side-by-side"
    seed_corpus(corpus_dir, side, args.prepare_mb)
    pairs = sample_access.masked(lb).parent / f"pairs-{lb.docs.stem}.jsonl"
    pairs = prefix(pairs, side / f"pairs-{args.sft_mb:g}mb.jsonl", args.sft_mb)
    pb = prepare.Bench(side, args.prepare_mb, notes)
    print("prepare, plain text ...", flush=True)
    plain = prepare_plain(pb, notes)
    print("prepare, SFT ...", flush=True)
    sft = prepare_sft(pb, pairs)
    print("loading ...", flush=True)
    loading = loading_rows(lb)
    run_loading(lb, loading, args)
    print("one sample at a time ...", flush=True)
    samples = one_sample(lb, args)
    print("startup ...", flush=True)
    starts = run_startup(lb, args)
    load_end = os.getloadavg()
    n_pairs = pairs.read_bytes().count(b"\n")

    print(
        f"\n### Prepare corpora\n\nplain: {pb.corpus['documents']:,} files, "
        f"{pb.corpus['bytes'] / 1e6:.1f} MB ({pb.corpus['sources']}); SFT: "
        f"{n_pairs:,} pairs, {pairs.stat().st_size / 1e6:.1f} MB"
    )
    print_prepare("Prepare, plain text", plain, PLAIN_LABELS)
    print_prepare("Prepare, SFT data (prompt/completion)", sft, SFT_LABELS)
    print("- ids not compared: the TRL-style row tokenizes the prompt apart from the text")
    for name, text in NO_SFT.items():
        print(f"- ¹ {name}: {text}")
    print_loading(loading)
    print_samples(samples)
    print_startup(starts, args.shards)
    print_memory(plain, sft, loading)
    print(f"\nload average (1, 5, 15 min): start {load_start}, end {load_end}")
    print(environment(load_start[0], PACKAGES))
    for note in notes:
        print(f"note: {note}")
    elapsed = time.perf_counter() - started
    print(f"whole run: {elapsed / 60:.1f} min")
    if args.json:
        saved = {
            "plain": plain,
            "sft": sft,
            "loading": loading,
            "samples": samples,
            "startup": starts,
            "load": [load_start, load_end],
            "versions": versions(PACKAGES),
            "notes": notes,
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(saved, indent=1, default=str))


if __name__ == "__main__":
    main()
