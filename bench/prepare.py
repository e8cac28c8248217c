"""Throughput and peak memory of ``gristmill prepare`` against its peers, on one corpus, in one run.

    python bench/prepare.py [--work /tmp/gristmill-bench] [--size-mb 150] [--only A,B] [--skip A,B]
                            [--json results.json]

The corpus is real text: the Python sources of this interpreter's standard library and
site-packages (sorted paths; empty and non-UTF-8 files skipped), one ``{"text": ...}`` JSON line per
file, about --size-mb MB, cached under --work with a half-size prefix of it. The tokenizer is a
byte-level BPE (vocabulary 32,000, ``<|endoftext|>`` its only special token) trained with
``tokenizers`` on every 10th document, saved as WORK/tokenizer.json. Every contender does the same
job: tokenize each text (no special tokens from the library), append the EOS id, store the ids
readably; gristmill finds the EOS by name and appends it the same way (``normalize=False``, as no
peer normalizes). Each contender runs in a fresh child process; its seconds are the job alone,
timed inside the child after its imports. Afterwards another child reads what it stored and
hashes the ids per document, in order, against the reference (the library's own ids).

Peak memory is sampled every 50 ms over the child's whole process tree (pool workers included,
with psutil): "RSS" is the sum of the processes' resident sets (pages shared between forked
workers count once per process), "PSS" the sum of their proportional sets (shared pages split),
which is what the tree really holds. Inputs and outputs live in the page cache: no contender
waits on the disk.

Setup (the peers need torch, and only the local CPU build may come in; mosaicml-streaming pins
transformers<5 and numpy<2.2, which would downgrade the stack under datasets: it goes in without
its pins, plus the modules it imports):

    python3.11 -m venv /work/benchvenv && B=/work/benchvenv/bin
    echo "torch==2.13.0" > /tmp/torch-pin.txt
    $B/pip install torch==2.13.0
    $B/pip install -c /tmp/torch-pin.txt -e '.[all]' psutil litdata megatron-core
    $B/pip install -c /tmp/torch-pin.txt --no-deps mosaicml-streaming
    $B/pip install -c /tmp/torch-pin.txt Brotli python-snappy zstd catalogue
    $B/python bench/prepare.py --json /tmp/prepare-bench.json

A peer that is not installed is reported as skipped; the rest still run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (  # bench/common.py, beside this script
    environment,
    print_targets,
    run_sampled,
    train_bpe,
    versions,
)

EOS = "<|endoftext|>"
VOCAB = 32_000
TRAIN_EVERY = 10  # the tokenizer learns from every 10th document
PROCS = 2
PACKAGES = ("gristmill", "tokenizers", "gigatoken", "transformers", "datasets", "litdata")
PACKAGES += ("mosaicml-streaming", "megatron-core", "torch", "numpy")


@dataclass
class Contender:
    """One row of the table: a job of ``peers.JOBS`` with its options and environment."""

    name: str  # for --only / --skip
    label: str  # the table row
    job: str  # key of peers.JOBS
    what: str
    half: bool = False  # on the half-size corpus
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def contenders(notes: list[str]) -> list[Contender]:
    """Every contender, gristmill's as its ``prepare`` allows (``workers=``, ``engine=``)."""
    import gristmill

    one = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}
    two = {"TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": str(PROCS)}
    rows = [
        Contender(
            "encode-1",
            "tokenizers, 1 thread",
            "encode",
            "encode_batch_fast, texts in memory, no I/O: the reference ids",
            env=one,
        ),
        Contender(
            "encode-2",
            f"tokenizers, {PROCS} threads",
            "encode",
            "the same on the library's own thread pool",
            env=two,
        ),
        Contender(
            "floor",
            "read-parse-write floor",
            "floor",
            "json.loads every line, write uint16 zeros of the reference's length",
        ),
        Contender(
            "datasets",
            f"datasets map ×{PROCS}",
            "datasets",
            f"load_dataset('json') + map(batched, num_proc={PROCS}), transformers fast tokenizer, fresh cache",
        ),
    ]
    params = inspect.signature(gristmill.prepare).parameters
    base: dict[str, Any] = {"normalize": False}
    if "workers" in params:
        base["workers"] = PROCS
    else:
        notes.append("gristmill.prepare has no workers= yet: gristmill runs in one process")
    x = f" ×{PROCS}" if "workers" in base else ""
    if "engine" in params:
        auto, hf = {**base, "engine": "auto"}, {**base, "engine": "hf"}
        rows += [
            Contender(
                "gristmill",
                f"gristmill auto{x}",
                "gristmill",
                call(auto),
                options=auto,
            ),
            Contender(
                "gristmill-hf",
                f"gristmill hf{x}",
                "gristmill",
                call(hf) + ": the tokenizers library itself",
                options=hf,
            ),
        ]
    else:
        notes.append("gristmill.prepare has no engine= yet: one gristmill row, its default engine")
        auto = base
        rows.append(Contender("gristmill", f"gristmill{x}", "gristmill", call(auto), options=auto))
    rows += [
        Contender(
            "gristmill-half",
            f"gristmill{x}, ½ corpus",
            "gristmill",
            "as 'gristmill', on the first half of the corpus",
            half=True,
            options=auto,
        ),
        Contender(
            "litdata",
            f"litdata optimize ×{PROCS}",
            "litdata",
            f"optimize(num_workers={PROCS}), a generator per input slice yields uint16 arrays",
        ),
        Contender(
            "streaming",
            f"MDSWriter ×{PROCS}",
            "streaming",
            f"MosaicML streaming: {PROCS} processes each MDSWriter a slice, then merge_index",
        ),
        Contender(
            "megatron",
            f"Megatron-style ×{PROCS}",
            "megatron",
            f"Pool({PROCS}).imap(encode, lines, 32) + megatron-core IndexedDatasetBuilder",
        ),
        Contender(
            "nanogpt",
            f"nanoGPT-style ×{PROCS}",
            "nanogpt",
            f"Pool({PROCS}).imap(encode) then one uint16 np.memmap",
        ),
    ]
    return rows


def call(options: dict[str, Any]) -> str:
    return f"prepare({', '.join(f'{k}={v!r}' for k, v in options.items())})"


# --- corpus and tokenizer -------------------------------------------------------------------------


def source_files() -> list[Path]:
    """This interpreter's standard library (less its own site-packages), then its site-packages."""
    paths = sysconfig.get_paths()
    stdlib = Path(paths["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py") if "site-packages" not in p.relative_to(stdlib).parts
    )
    for site in sorted({paths["purelib"], paths["platlib"]}):
        files += sorted(Path(site).rglob("*.py"))
    return [p for p in files if p.is_file() and "__pycache__" not in p.parts]


def build_corpus(work: Path, size_mb: float) -> tuple[Path, Path, dict[str, Any]]:
    """The corpus and its first half (a prefix, by documents), built once and cached."""
    full, half = work / f"corpus-{size_mb:g}mb.jsonl", work / f"corpus-{size_mb:g}mb-half.jsonl"
    meta_path = work / f"corpus-{size_mb:g}mb.json"
    if meta_path.exists() and full.exists() and half.exists():
        return full, half, json.loads(meta_path.read_text())
    limit, written, docs, skipped = int(size_mb * 1e6), 0, 0, 0
    half_at: tuple[int, int] | None = None
    with open(full, "wb") as out:
        for path in source_files():
            try:
                text = path.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                skipped += 1
                continue
            if not text:
                continue
            line = (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")
            out.write(line)
            written, docs = written + len(line), docs + 1
            if half_at is None and written >= limit // 2:
                half_at = (written, docs)
            if written >= limit:
                break
    half_bytes, half_docs = half_at or (written, docs)
    with open(full, "rb") as src, open(half, "wb") as dst:
        dst.write(src.read(half_bytes))
    meta = {
        "sources": f"standard library and site-packages of {sys.prefix} (Python {platform.python_version()})",
        "bytes": written,
        "documents": docs,
        "half_bytes": half_bytes,
        "half_documents": half_docs,
        "skipped_not_utf8": skipped,
        "sha256": hashlib.sha256(full.read_bytes()).hexdigest(),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return full, half, meta


def train_tokenizer(work: Path, corpus: Path) -> Path:
    """A byte-level BPE trained on every 10th document; deterministic for one corpus."""
    path = work / "tokenizer.json"
    if path.exists():
        return path

    def texts():
        with open(corpus, "rb") as f:
            for i, line in enumerate(f):
                if i % TRAIN_EVERY == 0:
                    yield json.loads(line)["text"]

    return train_bpe(texts(), path, vocab_size=VOCAB, eos=EOS)


# --- running the contenders -----------------------------------------------------------------------


def run_child(mode: str, spec: dict[str, Any], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run this script's ``mode`` child; return its result with the tree's peak RSS and PSS."""
    cmd = [sys.executable, __file__, mode, json.dumps(spec)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
    ran = run_sampled(cmd, log, env)
    results = [
        ln[7:] for ln in log.read_text(errors="replace").splitlines() if ln.startswith("RESULT ")
    ]
    if ran["returncode"] or not results:
        last = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        return {"failed": f"exit {ran['returncode']}: {''.join(last)[:120]} (see {log})"}
    return {**json.loads(results[-1]), **{k: ran[k] for k in ("peak_rss", "peak_pss", "wall")}}


def child(mode: str, spec: dict[str, Any]) -> None:
    import peers

    try:
        if mode == "--child":
            result = peers.JOBS[spec["job"]](spec["ctx"])
        else:
            digest = peers.Digest()
            peers.READERS[spec["job"]](Path(spec["out"]), spec["eos"], digest)
            result = digest.result()
    except ImportError as exc:
        result = {"skipped": f"{exc.name or exc} not installed"}
    print("RESULT " + json.dumps(result), flush=True)


def verdict(ref: dict[str, Any], got: dict[str, Any]) -> str:
    """Whether a contender stored the reference ids: in order, in another order, or not."""
    if "ordered" not in got:
        return "-"
    if got["tokens"] == ref["tokens"] and got["ordered"] == ref["ordered"]:
        return "yes"
    if got["docs"] == ref["docs"] and got["unordered"] == ref["unordered"]:
        return "yes, reordered"
    return "NO"


class Bench:
    """One run: the cached corpus, tokenizer and reference ids, and each contender's result."""

    def __init__(self, work: Path, size_mb: float, notes: list[str]):
        self.work, self.notes = work, notes
        for sub in ("out", "logs"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.full, self.half, self.corpus = build_corpus(work, size_mb)
        self.tokenizer = train_tokenizer(work, self.full)
        from tokenizers import Tokenizer

        self.eos = Tokenizer.from_file(str(self.tokenizer)).token_to_id(EOS)
        key = hashlib.sha256((self.corpus["sha256"] + self.tokenizer.read_text()).encode())
        self.reference_path = work / f"reference-{key.hexdigest()[:12]}.json"
        self.lengths = work / f"lengths-{key.hexdigest()[:12]}.npy"
        self.reference: dict[str, Any] | None = None
        if self.reference_path.exists() and self.lengths.exists():
            self.reference = json.loads(self.reference_path.read_text())

    def run(self, c: Contender, keep: bool = False) -> dict[str, Any]:
        """Run one contender in a child, then read back what it stored in another."""
        out = self.work / "out" / c.name
        ctx = {
            "corpus": str(self.half if c.half else self.full),
            "tokenizer": str(self.tokenizer),
            "eos": self.eos,
            "procs": PROCS,
            "out": str(out),
            "lengths": str(self.lengths),
            "prefix_docs": self.corpus["half_documents"],
            c.job: c.options,
        }
        print(f"  {c.name} ...", end=" ", flush=True)
        log = self.work / "logs" / f"{c.name}.log"
        got = run_child("--child", {"job": c.job, "ctx": ctx}, log, c.env)
        if c.job in READABLE and "seconds" in got:
            spec = {"job": c.job, "out": str(out), "eos": self.eos}
            check = run_child("--verify", spec, log.with_suffix(".verify.log"), {})
            if "ordered" not in check:
                self.notes.append(f"{c.name}: its output could not be read back: {check}")
            got |= {k: check[k] for k in ("tokens", "docs", "ordered", "unordered") if k in check}
        if "digest" in got:  # an encode job: the reference ids, for the whole and the half
            self.reference = {"full": got.pop("digest"), "half": got.pop("prefix")}
            self.reference_path.write_text(json.dumps(self.reference))
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        print(got.get("skipped") or got.get("failed") or f"{got['seconds']:.1f} s", flush=True)
        return got


READABLE = {"gristmill", "datasets", "litdata", "streaming", "megatron", "nanogpt"}


def print_table(rows: list[Contender], results: dict[str, dict[str, Any]], bench: Bench) -> None:
    base, floor = rate(results.get("datasets")), rate(results.get("floor"))

    def ratio(r: float, of: float | None) -> str:
        return f"{r / of:.2f}" if of else "-"

    head = (
        f"{'contender':<28}{'tokens':>13}{'seconds':>9}{'M tok/s':>9}{'×datasets':>10}"
        f"{'×floor':>8}{'RSS MiB':>9}{'PSS MiB':>9}  identical"
    )
    print(f"\n{head}\n{'-' * len(head)}")
    for c in rows:
        got = results[c.name]
        r = rate(got)
        if r is None:
            print(f"{c.label:<28}  {got.get('skipped') or got.get('failed') or got}")
            continue
        assert bench.reference is not None
        ref = bench.reference["half" if c.half else "full"]
        got["identical"] = "reference" if c.name == "encode-1" else verdict(ref, got)
        print(
            f"{c.label:<28}{got['tokens']:>13,}{got['seconds']:>9.1f}{r / 1e6:>9.2f}"
            f"{ratio(r, base):>10}{ratio(r, floor):>8}{got['peak_rss'] / 2**20:>9.0f}"
            f"{got['peak_pss'] / 2**20:>9.0f}  {got['identical']}"
        )
    print("\n".join(f"  {c.label}: {c.what}" for c in rows))


def rate(got: dict[str, Any] | None) -> float | None:
    """Tokens per second of a contender that ran."""
    if not got or "seconds" not in got or not got.get("tokens"):
        return None
    return got["tokens"] / got["seconds"]


def check_targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, bool | None]]:
    """The issue's targets, each with True (pass), False (fail) or None (not measured)."""
    g, h, d = (results.get(n, {}) for n in ("gristmill", "gristmill-half", "datasets"))
    r, base, floor = rate(g), rate(d), rate(results.get("floor"))
    out: list[tuple[str, bool | None]] = []
    text = "gristmill ≥ 10× the datasets pipeline, identical tokens"
    if r and base:
        same = g.get("identical") == d.get("identical") == "yes"
        text += f": {r / base:.1f}×, identical {'yes' if same else 'no'}"
        out.append((text, r >= 10 * base and same))
    else:
        out.append((text + ": not measured", None))
    text = "gristmill ≥ ½ the read-parse-write floor"
    if r and floor:
        out.append((f"{text}: {r / floor:.2f}×", r >= floor / 2))
    else:
        out.append((text + ": not measured", None))
    text = "peak RSS independent of corpus size"
    if r and rate(h):
        a, b = h["peak_rss"] / 2**20, g["peak_rss"] / 2**20
        text += f": {a:.0f} MiB at ½ corpus, {b:.0f} MiB at full ({(b - a) / a:+.0%}; limit +10%)"
        out.append((text, b <= 1.10 * a))
    else:
        out.append((text + ": not measured", None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--size-mb", type=float, default=150, help="corpus size (default 150)")
    parser.add_argument("--only", default="", help="comma-separated contender names")
    parser.add_argument("--skip", default="", help="comma-separated contender names")
    parser.add_argument("--json", type=Path, help="also save the results here")
    parser.add_argument("--keep", action="store_true", help="keep every contender's output")
    args = parser.parse_args()
    if importlib.util.find_spec("psutil") is None:
        sys.exit("bench/prepare.py needs psutil to follow process trees: pip install psutil")
    started = time.perf_counter()
    notes: list[str] = []
    rows = contenders(notes)
    only, skip = ({n for n in s.split(",") if n} for s in (args.only, args.skip))
    if unknown := (only | skip) - {c.name for c in rows}:
        names = ", ".join(c.name for c in rows)
        parser.error(f"unknown contender(s) {', '.join(sorted(unknown))}; names: {names}")
    rows = [c for c in rows if (not only or c.name in only) and c.name not in skip]

    bench = Bench(args.work.resolve(), args.size_mb, notes)
    corpus = bench.corpus
    print(
        f"corpus: {corpus['documents']:,} files, {corpus['bytes'] / 1e6:.0f} MB of JSON Lines "
        f"({corpus['sources']}); half: {corpus['half_documents']:,} files"
    )
    load = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}
    if bench.reference is None and not any(c.name == "encode-1" for c in rows):
        got = bench.run(Contender("reference", "", "encode", "", env={"RAYON_NUM_THREADS": "2"}))
        if bench.reference is None:
            sys.exit(f"the reference ids could not be made: {got}")
    for c in sorted(rows, key=lambda c: c.name != "encode-1"):  # the reference first
        results[c.name] = bench.run(c, keep=args.keep)

    print_table(rows, results, bench)
    targets = check_targets(results)
    print_targets(targets)
    print("\n" + environment(load, PACKAGES))
    print("memory: " + MEMORY)
    for note in notes:
        print(f"note: {note}")
    elapsed = time.perf_counter() - started
    print(
        f"whole run: {elapsed / 60:.1f} min (corpus, tokenizer, reference cached in {bench.work})"
    )
    if args.json:
        saved = {
            "corpus": corpus,
            "tokenizer": str(bench.tokenizer),
            "versions": versions(PACKAGES),
            "memory": MEMORY,
            "notes": notes,
            "results": {
                c.name: {"label": c.label, "what": c.what, **results[c.name]} for c in rows
            },
            "targets": [{"target": text, "pass": ok} for text, ok in targets],
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(saved, indent=1))


MEMORY = (
    "peak over the child's process tree sampled every 50 ms (psutil): RSS = sum of resident sets, "
    "PSS = sum of proportional sets (pages shared by forked workers split)"
)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--child", "--verify"):
        child(sys.argv[1], json.loads(sys.argv[2]))
    else:
        main()
