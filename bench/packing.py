"""Samples and seconds of gristmill's ``first-fit`` packer against TRL's ``pack_dataset`` (BFD).

    python bench/packing.py [--work /tmp/gristmill-bench] [--seq-len 2048[,4096,...]]
                            [--scales 1,4,16] [--repeat 3] [--overlong truncate|fragment]
                            [--buffer-sizes 16,128,1024] [--windows 16,64]
                            [--trl-max-scale 16] [--json results.json]

The lengths are real: every function of this interpreter's standard library (its ``.py`` files,
site-packages left out, sorted paths; files that do not parse are skipped) as a prompt/completion
pair. The prompt is the source from the function's first decorator (or ``def``) line through its
docstring, or through the signature when it has none; the completion is the rest of its body.
A function whose body is only a docstring is left out. Prompt and completion are tokenized
separately with the byte-level BPE WORK/tokenizer.json (the one ``bench/prepare.py`` trains; when
it is missing one is trained the same way on these functions), and a document's length is
prompt + completion + 1 (an EOS). The lengths are cached under --work. Scale k is that list
concatenated with itself k times.

Both packers get the same lengths and the same rule for a document longer than seq_len. With
``--overlong truncate`` (the default) gristmill's ``overlong="truncate"`` keeps its first seq_len
tokens and TRL's ``strategy="bfd"`` does the same (``pc.list_slice(column, 0, seq_length)``: the
overflow is dropped); with ``--overlong fragment`` gristmill cuts it into seq_len pieces and TRL
runs ``strategy="bfd_split"``, which does the same. The lower bound is
ceil(tokens kept / seq_len); efficiency is tokens kept / (samples x seq_len).

gristmill: the registered ``first-fit`` packer's ``plan(lengths, seq_len)`` on an int64 array,
best of --repeat. TRL: ``pack_dataset(dataset, seq_len, strategy)`` on an in-memory
``datasets.Dataset`` whose ``input_ids`` column holds a constant token (int32 Arrow lists; building
it is not timed), twice: as ``SFTTrainer`` calls it (no ``batch_size`` in ``map_kwargs``, so
``datasets.map`` hands BFD batches of 1,000 documents and each batch is packed on its own), and on
the whole split at once (``map_kwargs={"batch_size": None}``), the like-for-like global packing.
Each TRL run is repeated up to --repeat times while its runs add up to less than a minute. A TRL
run that would need more than half the free memory, or more than 10 minutes (extrapolated from
the scale before it), is skipped and said so. Every result is checked: the tokens placed add up
to the tokens kept, and no sample is over seq_len.

gristmill's online packers are timed the same way on the same lengths, in a second table:
``greedy-stream`` at each of --buffer-sizes (best fit among at most that many open samples,
documents taken in order, the same overlong rule), and ``concat-chunk`` on the 1× lengths (the
token stream cut into seq_len windows: it serves every token, truncating none, so its bound is
ceil(all tokens / seq_len)). Both are imported from their modules rather than found by name, so
that an editable install made before their entry points runs them too.

A third table sets the ``window`` packer at each of --windows (best fit among that many of the
earliest documents not placed yet, filling one sample at a time in corpus order; imported the same
way) beside ``first-fit``, with the same lengths, overlong rule, checks and timing: its samples,
efficiency and seconds, and its seconds over first-fit's.

Setup (the venv of ``bench/prepare.py``, plus TRL with torch pinned; TRL 1.16.0 brought only
accelerate and changed nothing else):

    B=/work/benchvenv/bin
    $B/pip install -c <(echo torch==2.13.0) trl
    $B/pip install -c <(echo torch==2.13.0) --no-deps -e .  # an editable install made before
                                                            # first-fit lacks its entry point
    $B/pip list | grep -E '^(torch|transformers|datasets|trl|accelerate) '  # torch 2.13.0+cpu
    $B/python bench/packing.py --json /tmp/packing-bench.json

torchvision 0.28.0 (from PyPI, pulled in by litdata) fails to import against the CPU build of
torch ("operator torchvision::nms does not exist"), and ``trl.data_utils`` imports
``transformers.ProcessorMixin``, which imports torchvision when it looks installed. When
``import torchvision`` fails, this script hides it (``sys.modules["torchvision"] = None``) before
importing TRL; packing uses no vision code.
"""

from __future__ import annotations

import argparse
import ast
import gc
import hashlib
import inspect
import itertools
import json
import math
import os
import platform
import resource
import sys
import sysconfig
import time
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import ints, train_bpe, versions  # bench/common.py, beside this script

EOS = "<|endoftext|>"
VOCAB = 32_000
TRAIN_EVERY = 10  # a tokenizer trained here learns from every 10th function, as prepare.py's
EXTRACT_VERSION = 1  # bump when the prompt/completion split changes: the cached lengths go stale
TRL_MODES = {  # label -> map_kwargs for pack_dataset
    "trl": {},  # as SFTTrainer calls it: datasets.map's default batches of 1,000
    "trl-whole": {"batch_size": None},  # one batch: the whole split
}
TRL_LABELS = {"trl": "TRL, batches of 1,000", "trl-whole": "TRL, whole split"}
REPEAT_BUDGET_S = 60.0
PACKAGES = ("gristmill", "trl", "datasets", "pyarrow", "numpy", "tokenizers", "transformers")
PACKAGES += ("torch",)


# --- the lengths ----------------------------------------------------------------------------------


def stdlib_files() -> list[Path]:
    """This interpreter's standard library, less its site-packages, in sorted order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        p
        for p in stdlib.rglob("*.py")
        if "site-packages" not in p.relative_to(stdlib).parts and "__pycache__" not in p.parts
    )


def functions(path: Path) -> Iterator[tuple[str, str, bool]]:
    """``(prompt, completion, documented)`` for each function of one file, in ``ast.walk`` order.

    Raises SyntaxError, ValueError or UnicodeDecodeError for a file that does not parse.
    """
    with open(path, "rb") as f:
        encoding, _ = tokenize.detect_encoding(f.readline)
    text = path.read_bytes().decode(encoding)
    # ast's col_offset counts UTF-8 bytes of the line: slice the UTF-8 bytes, whatever the file's
    # own encoding (a few test files declare latin-1).
    data = text.encode("utf-8")
    tree = ast.parse(text, filename=str(path))
    starts = np.cumsum([0] + [len(line) for line in data.splitlines(keepends=True)])
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.decorator_list[0] if node.decorator_list else node
        begin = int(starts[first.lineno - 1])  # the whole line: its indentation too
        documented = ast.get_docstring(node, clean=False) is not None
        body = node.body[1:] if documented else node.body
        if not body:
            continue
        head = node.body[0]
        cut = (
            int(starts[head.end_lineno - 1]) + head.end_col_offset  # type: ignore[operator]
            if documented
            else int(starts[head.lineno - 1]) + head.col_offset
        )
        end = int(starts[node.end_lineno - 1]) + node.end_col_offset  # type: ignore[operator]
        yield data[begin:cut].decode("utf-8"), data[cut:end].decode("utf-8"), documented


def tokenizer_for(work: Path, texts: list[str], notes: list[str]) -> Path:
    """WORK/tokenizer.json, or a byte-level BPE trained here the way bench/prepare.py trains it."""
    path = work / "tokenizer.json"
    if path.exists():
        return path
    path = work / "tokenizer-stdlib-functions.json"
    notes.append(f"{work / 'tokenizer.json'} missing: trained {path.name} on every 10th function")
    if path.exists():
        return path
    return train_bpe(texts[::TRAIN_EVERY], path, vocab_size=VOCAB, eos=EOS)


def load_lengths(work: Path, notes: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """Document lengths (prompt + completion + EOS, int64) of the stdlib's functions, cached."""
    files = stdlib_files()
    listing = "\n".join(f"{p}:{p.stat().st_size}" for p in files)
    tok = work / "tokenizer.json"
    tok_hash = hashlib.sha256(tok.read_bytes()).hexdigest() if tok.exists() else "trained-here"
    key = hashlib.sha256(f"{EXTRACT_VERSION}\n{tok_hash}\n{listing}".encode()).hexdigest()[:12]
    cache, meta_path = work / f"packing-lengths-{key}.npz", work / f"packing-lengths-{key}.json"
    if cache.exists() and meta_path.exists():
        with np.load(cache) as saved:
            prompt, completion = saved["prompt"], saved["completion"]
        meta = json.loads(meta_path.read_text())
    else:
        print("extracting the standard library's functions ...", flush=True)
        prompts, completions, documented, skipped = [], [], 0, 0
        for path in files:
            try:
                found = list(functions(path))
            except (SyntaxError, ValueError, UnicodeDecodeError):
                skipped += 1  # Python 2 test data of lib2to3, deliberately broken test files
                continue
            for p, c, d in found:
                prompts.append(p)
                completions.append(c)
                documented += d
        from tokenizers import Tokenizer

        path = tokenizer_for(work, [p + c for p, c in zip(prompts, completions)], notes)
        tokenizer = Tokenizer.from_file(str(path))
        print(f"tokenizing {len(prompts):,} functions with {path} ...", flush=True)
        prompt, completion = (
            np.array(
                [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)],
                np.int64,
            )
            for texts in (prompts, completions)
        )
        meta = {
            "source": f"standard library of Python {platform.python_version()} "
            f"({sysconfig.get_paths()['stdlib']})",
            "files": len(files),
            "skipped_files": skipped,
            "functions": len(prompts),
            "documented": documented,
            "tokenizer": str(path),
            "characters": sum(map(len, prompts)) + sum(map(len, completions)),
        }
        np.savez(cache, prompt=prompt, completion=completion)
        meta_path.write_text(json.dumps(meta, indent=1))
    return prompt + completion + 1, meta


# --- the packers ----------------------------------------------------------------------------------


@dataclass
class Packed:
    """One packer's result at one scale and seq_len."""

    samples: int
    tokens: int
    seconds: float
    runs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def efficiency(self, seq_len: int) -> float:
        return self.tokens / (self.samples * seq_len)


def kept(lengths: np.ndarray, seq_len: int, overlong: str) -> int:
    """Tokens that a packer places under the overlong rule."""
    return int(lengths.sum() if overlong == "fragment" else np.minimum(lengths, seq_len).sum())


def gristmill_packer(overlong: str, notes: list[str]) -> Any:
    """The registered ``first-fit`` packer, found the way ``open_dataset`` finds it."""
    from gristmill.plugin.manager import get_manager

    factory = get_manager().packer("first-fit").factory
    if "overlong" in inspect.signature(factory).parameters:
        return factory(overlong=overlong)
    if overlong != "truncate":
        sys.exit("this gristmill's first-fit packer has no overlong= option: only truncate runs")
    notes.append("first-fit has no overlong= option here: it truncates, as it always did")
    return factory()


def stream_packers(overlong: str, sizes: list[int]) -> dict[int, Any]:
    """``greedy-stream`` at each buffer size (imported, not found by name: see the docstring)."""
    from gristmill_greedy_stream import GreedyStreamPacker

    return {size: GreedyStreamPacker(overlong=overlong, buffer_size=size) for size in sizes}


def window_packers(overlong: str, sizes: list[int]) -> dict[int, Any]:
    """``window`` at each window size (imported, not found by name, as ``stream_packers``)."""
    from gristmill_window import WindowPacker

    return {size: WindowPacker(overlong=overlong, window=size) for size in sizes}


def run_gristmill(packer: Any, lengths: np.ndarray, seq_len: int, repeat: int) -> Packed:
    best, plan = math.inf, None
    for _ in range(repeat):
        began = time.perf_counter()
        plan = packer.plan(lengths, seq_len)
        best = min(best, time.perf_counter() - began)
    assert plan is not None
    fill = np.add.reduceat(plan.seg_len, plan.sample_bounds[:-1]) if len(plan) else np.zeros(0)
    assert np.all(np.diff(plan.sample_bounds) > 0), "gristmill: an empty sample"
    assert fill.max(initial=0) <= seq_len, "gristmill: a sample over seq_len"
    return Packed(len(plan), int(plan.seg_len.sum()), best, repeat)


def measure(
    label: str, packer: Any, lengths: np.ndarray, seq_len: int, tokens: int, repeat: int
) -> dict[str, Any]:
    """A gristmill packer's checked result, as the tables' rows hold it."""
    print(f"  {label} ...", end=" ", flush=True)
    got = run_gristmill(packer, lengths, seq_len, repeat)
    assert got.tokens == tokens, f"{label} placed {got.tokens:,} of {tokens:,} tokens"
    print(f"{got.seconds:.3f} s", flush=True)
    return {**vars(got), "efficiency": got.efficiency(seq_len)}


def run_concat_chunk(base: np.ndarray, seq_len: int, repeat: int) -> dict[str, Any]:
    """``concat-chunk`` on the 1× lengths; it serves every token, so its bound counts them all."""
    from gristmill_concat_chunk import ConcatChunkPacker

    tokens = kept(base, seq_len, "fragment")  # windows cut documents: none is overlong
    return {
        "seq_len": seq_len,
        "tokens": tokens,
        "lower_bound": lower_bound(tokens, seq_len),
        **measure("1× concat-chunk", ConcatChunkPacker(), base, seq_len, tokens, repeat),
    }


def trl_dataset(lengths: np.ndarray) -> Any:
    """An in-memory Dataset whose ``input_ids`` are ``[1] * length`` per document (int32)."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(np.ones(int(offsets[-1]), np.int32))
    if offsets[-1] < 2**31:
        column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    else:
        column = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return Dataset(InMemoryTable(pa.table({"input_ids": column})))


def import_trl(notes: list[str]) -> Any:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    except Exception as exc:  # a wheel built for another torch: see the module docstring
        sys.modules["torchvision"] = None  # type: ignore[assignment]
        notes.append(f"torchvision fails to import ({str(exc)[:60]}): hidden from transformers")
    import datasets
    from trl.data_utils import pack_dataset

    datasets.disable_progress_bars()
    return pack_dataset


def run_trl(
    pack_dataset: Any, lengths: np.ndarray, seq_len: int, strategy: str, mode: str, repeat: int
) -> Packed:
    import pyarrow.compute as pc

    dataset = trl_dataset(lengths)
    best, total, runs, packed = math.inf, 0.0, 0, None
    while runs < repeat and (runs == 0 or total < REPEAT_BUDGET_S):
        packed = None
        gc.collect()
        began = time.perf_counter()
        packed = pack_dataset(dataset, seq_len, strategy=strategy, map_kwargs=TRL_MODES[mode])
        took = time.perf_counter() - began
        best, total, runs = min(best, took), total + took, runs + 1
    assert packed is not None
    table = packed.data.table
    rows = pc.list_value_length(table.column("input_ids"))
    assert pc.max(rows).as_py() <= seq_len, f"{mode}: a row over seq_len"
    tokens = int(pc.sum(rows).as_py())
    segments = len(pc.list_flatten(table.column("seq_lengths")))
    del dataset, packed, table
    gc.collect()
    return Packed(len(rows), tokens, best, runs, {"segments": segments})


def trl_fits(
    lengths: np.ndarray, before: tuple[int, float] | None, notes: list[str], label: str
) -> bool:
    """Whether a TRL run at these lengths fits in memory and, by extrapolation, in 10 minutes."""
    # input ids, their truncated copy, the taken rows and the packed output: four int32 copies
    need = 4 * 4 * int(lengths.sum()) + 64 * len(lengths)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free / 2:
        notes.append(
            f"{label} skipped at {len(lengths):,} documents: needs about "
            f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        )
        return False
    if before:
        docs, seconds = before
        n = len(lengths)
        guess = seconds * n * math.log(n) / (docs * math.log(docs))
        if guess > 600:
            notes.append(f"{label} skipped at {n:,} documents: about {guess / 60:.0f} min expected")
            return False
    return True


# --- the run --------------------------------------------------------------------------------------


def lower_bound(tokens: int, seq_len: int) -> int:
    return -(-tokens // seq_len)


LEAD = f"{'seq_len':>7}{'scale':>6}{'documents':>11}{'bound':>9}{'bound eff':>10}"
GROUPS = len(LEAD) + 2  # the column where the first group's "| " begins under its heading
BOUND_KEY = "bound: ceil(tokens kept / seq_len) samples; eff: tokens kept / (samples × seq_len)"


def lead(r: dict[str, Any]) -> str:
    """The columns both tables start with: the row's lengths and their lower bound."""
    s = r["seq_len"]
    return (
        f"{s:>7}{r['scale']:>5}×{r['documents']:>11,}{r['lower_bound']:>9,}"
        f"{r['tokens'] / (r['lower_bound'] * s):>10.3%}"
    )


def print_table(rows: list[dict[str, Any]], modes: list[str]) -> None:
    groups = f"{'':<{GROUPS}}{'| gristmill first-fit':<31}"
    head = f"{LEAD}{'| samples':>11}{'eff':>9}{'s':>8}"
    for mode in modes:
        groups += f"{'| ' + TRL_LABELS[mode]:<35}"
        head += f"{'| rows':>11}{'eff':>9}{'s':>8}{'×':>7}"
    print(f"\n{groups.rstrip()}\n{head}\n{'-' * len(head)}")
    for r in rows:
        g = r["gristmill"]
        line = f"{lead(r)}{g['samples']:>11,}{g['efficiency']:>9.3%}{g['seconds']:>8.3f}"
        for mode in modes:
            t = r.get(mode)
            if t is None:
                line += f"{'not run':>11}{'':>24}"
                continue
            line += (
                f"{t['samples']:>11,}{t['efficiency']:>9.3%}{t['seconds']:>8.2f}"
                f"{t['seconds'] / g['seconds']:>6.0f}×"
            )
        print(line)
    print(f"  {BOUND_KEY}; s: seconds, best run; ×: TRL seconds / gristmill seconds")
    for mode in modes:
        print(f"  {TRL_LABELS[mode]}: pack_dataset(..., map_kwargs={TRL_MODES[mode]})")


def print_stream_table(rows: list[dict[str, Any]], chunked: list[dict[str, Any]]) -> None:
    """greedy-stream at each buffer size against the same bound, then concat-chunk's line."""
    sizes = list(rows[0]["greedy-stream"]) if rows else []
    groups, head = f"{'':<{GROUPS}}", LEAD
    for size in sizes:
        groups += f"{f'| greedy-stream, buffer {size}':<43}"
        head += f"{'| samples':>11}{'eff':>9}{'over':>7}{'over %':>9}{'s':>7}"
    print(f"\n{groups.rstrip()}\n{head}\n{'-' * len(head)}")
    for r in rows:
        line = lead(r)
        for size in sizes:
            g, bound = r["greedy-stream"][size], r["lower_bound"]
            line += (
                f"{g['samples']:>11,}{g['efficiency']:>9.3%}{g['samples'] - bound:>+7,}"
                f"{g['samples'] / bound - 1:>+9.3%}{g['seconds']:>7.3f}"
            )
        print(line)
    print(f"  {BOUND_KEY}; over: samples over the bound; s: seconds, best run")
    print("  buffer: open samples, so at most buffer × seq_len tokens held back")
    for c in chunked:
        print(
            f"concat-chunk, 1×, seq_len {c['seq_len']}: {c['samples']:,} samples, "
            f"eff {c['efficiency']:.3%}, {c['seconds']:.3f} s\n  bound ceil(all {c['tokens']:,} "
            f"tokens / {c['seq_len']}) = {c['lower_bound']:,}: it serves every token, cutting "
            "documents at window edges and truncating none"
        )


def print_window_table(rows: list[dict[str, Any]]) -> None:
    """The window packer at each window size beside first-fit, against the same bound."""
    sizes = list(rows[0]["window"]) if rows else []
    groups = f"{'':<{GROUPS}}{'| first-fit':<35}"
    head = f"{LEAD}{'| samples':>11}{'eff':>9}{'over %':>9}{'s':>7}"
    for size in sizes:
        groups += f"{f'| window, {size}':<43}"
        head += f"{'| samples':>11}{'eff':>9}{'over %':>9}{'s':>7}{'× ff':>7}"
    print(f"\n{groups.rstrip()}\n{head}\n{'-' * len(head)}")
    for r in rows:
        g, bound = r["gristmill"], r["lower_bound"]
        line = (
            f"{lead(r)}{g['samples']:>11,}{g['efficiency']:>9.3%}"
            f"{g['samples'] / bound - 1:>+9.3%}{g['seconds']:>7.3f}"
        )
        for size in sizes:
            w = r["window"][size]
            line += (
                f"{w['samples']:>11,}{w['efficiency']:>9.3%}{w['samples'] / bound - 1:>+9.3%}"
                f"{w['seconds']:>7.3f}{w['seconds'] / g['seconds']:>6.2f}×"
            )
        print(line)
    print(f"  {BOUND_KEY}; over %: samples over the bound; s: seconds, best run")
    print(
        "  × ff: window seconds / first-fit seconds; window: documents the best fit chooses among"
    )


def check_targets(rows: list[dict[str, Any]], modes: list[str]) -> list[tuple[str, bool | None]]:
    """The issue's targets at seq_len 2048, each True (pass), False (fail) or None (not run)."""
    at = sorted((r for r in rows if r["seq_len"] == 2048), key=lambda r: r["scale"])
    out: list[tuple[str, bool | None]] = []
    if not at:
        return [("the targets are set at seq_len 2048, which did not run", None)]
    over = [r["gristmill"]["samples"] / r["lower_bound"] - 1 for r in at]
    out.append(
        (
            "efficiency within 0.5% of the lower bound: samples over the bound "
            + ", ".join(f"{r['scale']}× {o:+.3%}" for r, o in zip(at, over)),
            max(over) <= 0.005,
        )
    )
    for mode in modes:
        pairs = [(r, r[mode]) for r in at if r.get(mode)]
        text = f"efficiency not below {TRL_LABELS[mode]}"
        if not pairs:
            out.append((text + ": not measured", None))
            continue
        diffs = [r["gristmill"]["efficiency"] - t["efficiency"] for r, t in pairs]
        text += ": " + ", ".join(
            f"{r['scale']}× {d * 100:+.3f} pt" for (r, _), d in zip(pairs, diffs)
        )
        out.append((text, min(diffs) >= 0))
    top = at[-1]
    for mode in modes:
        text = f"≥ 10× faster than {TRL_LABELS[mode]} at {top['scale']}×"
        t = top.get(mode)
        if t is None:
            out.append((text + ": not measured", None))
            continue
        speedup = t["seconds"] / top["gristmill"]["seconds"]
        out.append((f"{text}: {speedup:.0f}×", speedup >= 10))
    text = "time grows no worse than n log n (10% allowance for timer noise)"
    if len(at) < 2:
        out.append((text + ": one scale only", None))
        return out
    parts, ok = [], True
    for a, b in itertools.pairwise(at):
        na, nb = a["documents"], b["documents"]
        allowed = nb * math.log(nb) / (na * math.log(na))
        ratio = b["gristmill"]["seconds"] / a["gristmill"]["seconds"]
        parts.append(f"{b['scale']}×/{a['scale']}× {ratio:.2f} (n log n {allowed:.2f})")
        ok = ok and ratio <= 1.10 * allowed
    out.append((f"{text}: " + ", ".join(parts), ok))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--seq-len", type=ints, default=[2048], help="comma-separated (2048)")
    parser.add_argument("--scales", type=ints, default=[1, 4, 16], help="comma-separated (1,4,16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per packer (best counts)")
    parser.add_argument("--overlong", choices=("truncate", "fragment"), default="truncate")
    parser.add_argument(
        "--buffer-sizes", type=ints, default=[16, 128, 1024], help="greedy-stream's (16,128,1024)"
    )
    parser.add_argument(
        "--windows", type=ints, default=[16, 64], help="the window packer's sizes (16,64)"
    )
    parser.add_argument("--trl-max-scale", type=int, default=16, help="largest scale TRL runs at")
    parser.add_argument("--no-trl", action="store_true", help="gristmill only")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    notes: list[str] = []
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    base, corpus = load_lengths(work, notes)
    print(
        f"lengths: {corpus['functions']:,} functions ({corpus['documented']:,} with a docstring) "
        f"from {corpus['files'] - corpus['skipped_files']:,} files of the {corpus['source']}, "
        f"{int(base.sum()):,} tokens; median {int(np.median(base))}, max {int(base.max()):,}"
    )
    packer = gristmill_packer(args.overlong, notes)
    streaming = stream_packers(args.overlong, args.buffer_sizes)
    windows = window_packers(args.overlong, args.windows)
    strategy = "bfd" if args.overlong == "truncate" else "bfd_split"
    pack_dataset = None if args.no_trl else import_trl(notes)
    modes = [] if args.no_trl else list(TRL_MODES)
    load = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    chunked: list[dict[str, Any]] = []
    for seq_len in args.seq_len:
        print(f"seq_len {seq_len}, over it: {int((base > seq_len).sum()):,} documents")
        chunked.append(run_concat_chunk(base, seq_len, args.repeat))
        before: dict[str, tuple[int, float]] = {}
        for scale in args.scales:
            lengths = np.tile(base, scale)
            tokens = kept(lengths, seq_len, args.overlong)
            row: dict[str, Any] = {
                "seq_len": seq_len,
                "scale": scale,
                "documents": len(lengths),
                "tokens": tokens,
                "lower_bound": lower_bound(tokens, seq_len),
            }
            same = (lengths, seq_len, tokens, args.repeat)  # every gristmill packer's
            row["gristmill"] = measure(f"{scale}× gristmill", packer, *same)
            row["greedy-stream"] = {
                size: measure(f"{scale}× greedy-stream, buffer {size}", online, *same)
                for size, online in streaming.items()
            }
            row["window"] = {
                size: measure(f"{scale}× window, {size}", window, *same)
                for size, window in windows.items()
            }
            for mode in modes:
                label = f"{TRL_LABELS[mode]} (seq_len {seq_len})"
                if scale > args.trl_max_scale:
                    notes.append(f"{label} not run at {scale}× (--trl-max-scale)")
                    continue
                if not trl_fits(lengths, before.get(mode), notes, label):
                    continue
                print(f"  {scale}× {mode} ...", end=" ", flush=True)
                got = run_trl(pack_dataset, lengths, seq_len, strategy, mode, args.repeat)
                assert got.tokens == tokens, f"{mode} kept {got.tokens:,} of {tokens:,} tokens"
                row[mode] = {**vars(got), "efficiency": got.efficiency(seq_len)}
                before[mode] = (len(lengths), got.seconds)
                print(f"{got.seconds:.2f} s (best of {got.runs})", flush=True)
            rows.append(row)

    print_table(rows, modes)
    print_stream_table(rows, chunked)
    print_window_table(rows)
    targets = check_targets(rows, modes)
    print("\ntargets (the issue's, at seq_len 2048):")
    for text, ok in targets:
        print(f"  {'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {text}")
    found = versions(PACKAGES)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\noverlong: {args.overlong} (gristmill overlong={args.overlong!r}, TRL strategy="
        f"{strategy!r}); Python {platform.python_version()}, {os.cpu_count()} cores, load average "
        f"{load:.1f} before and {os.getloadavg()[0]:.1f} after; peak RSS {peak:.1f} GiB; "
        + ", ".join(f"{k} {v}" for k, v in found.items() if v)
    )
    for note in notes:
        print(f"note: {note}")
    elapsed = time.perf_counter() - started
    print(f"whole run: {elapsed / 60:.1f} min (lengths cached in {work})")
    if args.json:
        saved = {
            "lengths": corpus,
            "overlong": args.overlong,
            "trl_strategy": strategy,
            "versions": found,
            "notes": notes,
            "rows": rows,
            "concat_chunk": chunked,
            "targets": [{"target": text, "pass": ok} for text, ok in targets],
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
