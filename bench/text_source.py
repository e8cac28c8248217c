"""Reading plain text files against reading the same texts as JSON Lines, per unit.

    python bench/text_source.py [--work /tmp/gristmill-text-bench] [--size-mb 64]
                                [--units line,paragraph,file] [--repeat 3] [--workers N]
                                [--prepare-repeat 2] [--no-prepare] [--json results.json]

The corpus is real text: the Python sources of this interpreter's standard library (sorted
paths; empty and non-UTF-8 files skipped), each saved as one ``.txt`` file, about --size-mb MB in
all, under WORK/txt. For each unit the same texts are written as JSON Lines, one ``.jsonl`` file
beside each ``.txt`` file (WORK/jsonl-UNIT), one ``{"text": ...}`` line per record the text source
yields for that unit (a line, a paragraph, a file): both sides hold the same records, which the
script checks (count and SHA-256 of the texts in order) before it times anything.

Read rate: every source of the folder opened as ``prepare`` opens it (``open_sources``), its
``records()`` iterated to the end in this process; the best of --repeat passes, the text and
JSONL folders taking turns. MB/s is the input's own bytes (the JSONL folder holds more: keys,
quotes, escapes), records/s the records read. Prepare: ``gristmill prepare FOLDER -o OUT`` with the
byte tokenizer in a fresh process, wall time, --workers workers (default: the CLI's, one per CPU),
the best of --prepare-repeat runs, the two folders taking turns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from common import environment  # bench/common.py, beside this script

from gristmill.ingest.sources import open_sources
from gristmill.plugin.components import PassedOver, Rejected
from gristmill.plugin.manager import get_manager

UNITS = ("line", "paragraph", "file")


def write_corpus(folder: Path, size_mb: int) -> list[Path]:
    """The standard library's modules as .txt files, about ``size_mb`` MB (kept between runs)."""
    done = folder / ".complete"
    if done.exists():
        return sorted(folder.glob("*.txt"))
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    total, written = 0, []
    for index, path in enumerate(sorted(root.rglob("*.py"))):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        out = folder / f"{index:05d}-{path.stem}.txt"
        out.write_text(text, encoding="utf-8", newline="")
        written.append(out)
        total += out.stat().st_size
        if total >= size_mb * 1_000_000:
            break
    done.touch()
    return written


def texts_of(spec: str, options: dict) -> tuple[list[str], int]:
    """The texts the folder's sources yield, in order, and the units they passed over."""
    texts, passed = [], 0
    for source in open_sources([spec], get_manager(), options):
        for item in source.records():
            if isinstance(item, PassedOver):
                passed += item.rows
            elif isinstance(item, Rejected):
                raise SystemExit(f"{item.where}: {item.message}")
            else:
                texts.append(item[0]["text"])
    return texts, passed


def write_jsonl(txt: Path, folder: Path, unit: str) -> None:
    """One .jsonl beside each .txt, holding the records the text source yields for ``unit``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(txt.glob("*.txt")):
        texts, _ = texts_of(str(path), {"unit": unit})
        with open(folder / f"{path.stem}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)


def digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:16]


def read_rate(spec: str, options: dict) -> tuple[float, int]:
    """Seconds to read every record of ``spec``, and how many there were."""
    start = time.perf_counter()
    count = 0
    for source in open_sources([spec], get_manager(), options):
        for item in source.records():
            if not isinstance(item, PassedOver):
                count += 1
    return time.perf_counter() - start, count


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name[0] != ".")


def prepare_seconds(spec: Path, out: Path, options: dict, workers: int | None) -> float:
    """Wall time of ``gristmill prepare`` in a fresh process."""
    args = [sys.executable, "-m", "gristmill.cli", "prepare", str(spec), "-o", str(out)]
    args += ["--overwrite", "--no-progress"]
    if workers:
        args += ["--workers", str(workers)]
    if options:
        config = out.with_suffix(".toml")
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
        config.write_text(f"[prepare]\nsource_options = {{{table}}}\n")
        args += ["--config", str(config)]
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - start


def bench_unit(unit: str, work: Path, args: argparse.Namespace) -> dict:
    txt, jsonl = work / "txt", work / f"jsonl-{unit}"
    if not (jsonl / ".complete").exists():
        write_jsonl(txt, jsonl, unit)
        (jsonl / ".complete").touch()
    options = {"unit": unit}
    text_texts, passed = texts_of(str(txt), options)
    jsonl_texts, _ = texts_of(str(jsonl), {})
    assert digest(text_texts) == digest(jsonl_texts), f"{unit}: the two folders hold other texts"
    sides = {"text": (txt, options), "jsonl": (jsonl, {})}
    best = {name: float("inf") for name in sides}
    records = {}
    for _ in range(args.repeat):
        for name, (folder, opts) in sides.items():
            seconds, records[name] = read_rate(str(folder), opts)
            best[name] = min(best[name], seconds)
    result: dict = {"unit": unit, "records": len(text_texts), "passed_over": passed}
    for name, (folder, _) in sides.items():
        size = folder_bytes(folder)
        result[name] = {
            "bytes": size,
            "read_s": round(best[name], 3),
            "mb_s": round(size / 1e6 / best[name], 1),
            "records_s": round(records[name] / best[name]),
        }
    for _ in range(args.prepare_repeat if args.prepare else 0):
        for name, (folder, opts) in sides.items():
            seconds = prepare_seconds(folder, work / f"out-{name}-{unit}", opts, args.workers)
            result[name]["prepare_s"] = round(min(seconds, result[name].get("prepare_s", 1e9)), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-text-bench"))
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--units", default=",".join(UNITS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--prepare-repeat", type=int, default=2)
    parser.add_argument("--no-prepare", dest="prepare", action="store_false")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    files = write_corpus(args.work / "txt", args.size_mb)
    print(f"corpus: {len(files):,} .txt files, {folder_bytes(args.work / 'txt') / 1e6:.1f} MB")
    results = []
    header = f"{'unit':<10}{'source':<7}{'MB':>7}{'records':>10}{'read s':>8}{'MB/s':>7}"
    print(header + f"{'records/s':>11}{'prepare s':>11}")
    for unit in args.units.split(","):
        result = bench_unit(unit, args.work, args)
        results.append(result)
        for name in ("text", "jsonl"):
            side = result[name]
            prepare = f"{side['prepare_s']:>11.2f}" if "prepare_s" in side else f"{'-':>11}"
            print(
                f"{unit:<10}{name:<7}{side['bytes'] / 1e6:>7.1f}{result['records']:>10,}"
                f"{side['read_s']:>8.2f}{side['mb_s']:>7.1f}{side['records_s']:>11,}{prepare}"
            )
        ratio = result["jsonl"]["read_s"] / result["text"]["read_s"]
        print(f"{'':<10}text reads the records {ratio:.2f}x as fast as jsonl")
    print(environment(load, ["gristmill", "orjson"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
