"""Packed batches per second through gristmill's DataLoader, against a bare ``np.memmap`` loop and
against MosaicML ``streaming`` and ``litdata`` serving the same tokens; and startup to the first
batch as a dataset grows from 10 to 10,000 shards.

    python bench/loader.py [--work /tmp/gristmill-bench/loader] [--corpus-dir /tmp/gristmill-bench]
                           [--seconds 5] [--shards 10,100,1000,10000] [--repeat 3] [--rounds 3]
                           [--no-peers]
                           [--only throughput,breakdown,startup] [--json results.json]

The tokens are real: the corpus of ``bench/prepare.py`` (the Python sources of this interpreter's
standard library and site-packages, about 150 MB of JSON Lines, cached in --corpus-dir and built
there when missing) and its byte-level BPE (vocabulary 32,000, ``WORK/tokenizer.json``). A source
file is cut into documents: its top-level blocks (a ``def`` or ``class`` with its decorators, or
the code between them), and a block over 6,000 characters cut at blank lines into pieces of at
most 6,000 (a run of lines without a blank one stays whole). That gives about 84,000 documents
(median about 200 tokens, mean about 475), which ``gristmill.prepare(..., normalize=False)``
turns into about 40 M uint16 tokens, each document ending with the EOS. Everything converted is
cached under --work; no conversion is timed.

Throughput (table 1). Every row runs in a fresh child process and reads files already in the
page cache, --rounds times in turn (all rows, then all rows again), and the table shows each
row's median run. A row builds its loader, takes the first batch (its "startup", from opening the data
to that batch, imports excluded), then skips the batches its workers prefetched meanwhile
(``2 × workers`` items: batches, or a gristmill worker's chunks of 8 steps), runs a full
garbage collection, and times the batches after them for --seconds or until the epoch ends.
The collection is the one that importing torch leaves owing (about 170,000 objects, 100-300 ms
to scan here): without it, it falls inside whichever timed loop first keeps more than 700 new
objects alive at once, which made a half-second gristmill row up to 30% slower while the
peers' loops never trigger it; a training run pays it once in hours.
samples/s counts the samples of those batches, tokens/s their real tokens (padding excluded;
every 2048-token window is all real tokens). Batches are 8 samples of at most 2048 tokens.

- gristmill: ``open_dataset(DIR, seq_len=2048, packer=P)`` of the 10-shard dataset, then
  ``gristmill.torch.dataloader(ds, batch_size=8, num_workers=W, collate_fn=C)`` with its default
  sampler (a new shuffle every epoch). ``first-fit`` packs whole documents (the few longer than
  2048 tokens truncated, as ``overlong`` defaults). C is one of ``COLLATORS``: ``Collator()``
  (what the loader uses by default: padded rows, no mask, the boundaries under transformers'
  names and ``use_cache=False``; what ``Collator.for_model`` gives SDPA and eager models),
  ``padding_free=True`` (one row with ``cu_seqlens`` as well: what ``for_model`` gives
  flash-attention and flex attention models), ``mask='flex'`` (padded rows and a FlexAttention
  ``BlockMask``), and padded rows with a mask: ``'bool'`` (the (8, 1, T, T) boolean mask, 32 MiB
  a batch at T = 2048), ``'padding'`` (the 2-D padding mask) and ``'additive'`` (the (8, 1, T, T)
  float32 mask, 128 MiB a batch: the default before issue 21, now asked for by name).
  ``concat-chunk`` cuts the token stream into 2048-token windows, the same samples the peers
  serve. Each sample carries int64 ``input_ids``, ``labels``, ``position_ids`` and
  ``seq_lens``.
- memmap ceiling: nanoGPT's ``get_batch``: one ``np.memmap`` of every token (the shards'
  ``.tokens`` files concatenated, uint16), 8 random offsets from ``torch.randint``, and
  ``torch.from_numpy(np.stack([data[i:i + 2049] for i in ix]).astype(np.int64))`` split into
  inputs and targets (2048 tokens counted a sample). Once in a plain loop, as nanoGPT calls it
  (no DataLoader), and once as an IterableDataset of such batches under a torch DataLoader with
  2 workers.
- streaming: every whole 2048-token window of the same stream (the tail shorter than a window
  left out) written with ``MDSWriter`` (column ``ndarray:uint16:2048``, uncompressed) into as
  many shards as gristmill's, read with ``StreamingDataset(local=DIR, batch_size=8,
  shuffle=True)`` under ``torch.utils.data.DataLoader(batch_size=8, num_workers=W)``. Samples come
  as uint16 tensors (no int64 copy, no labels or positions).
- litdata: the same windows through ``optimize(..., item_loader=TokensLoader())`` into as many
  chunks, read with ``StreamingDataset(DIR, item_loader=TokensLoader(block_size=2048),
  shuffle=True)`` under ``StreamingDataLoader(batch_size=8, num_workers=W)`` (the path LitGPT
  pretrains with). Also uint16 samples, nothing else.

"× ceiling" is the memmap loop's tokens/s over the row's.

Where the time goes (table 2): in one child, for 2,000 random samples of each packer (read once
untimed first, so that neither timing includes mapping their pages), ``ds[i]`` one by one and
``ds.batch(indices)`` 8 at a time (what the loader does for a step; µs per sample), and each
collator on batches of those samples (ms per batch), timed apart.

Startup (table 3): the same documents prepared with ``tokens_per_shard`` chosen (by replaying the
writer's rule, a shard ends at the first document boundary past the target, on each task's
documents) to give about 10, 100, 1,000 and 10,000 shards (the counts shown are the real ones),
the peers' data written into as many shards (equal windows per shard). For every count, a fresh
child imports (timed apart) and then measures ``open_dataset(DIR, seq_len=2048,
packer="first-fit")``, ``dataloader(ds, batch_size=8)`` (0 workers, the default collator) and
the first batch; "cold" removes the pack-plan cache beside the shards first, so the plan is
computed (and cached), "warm" reuses it. The peers: the dataset object, the DataLoader (0
workers) and the first batch. Median of --repeat children; the page cache is warm.

Setup: the venv of ``bench/prepare.py`` (torch 2.13.0 CPU, gristmill editable, litdata, and
mosaicml-streaming without its pins), run with its interpreter:

    /work/benchvenv/bin/python bench/loader.py --json /tmp/loader-bench.json

``import streaming`` fails where PyPI's torchvision cannot load beside the CPU torch; the
streaming rows then import ``streaming.base`` alone (``peers.import_streaming``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import (  # bench/common.py, beside this script
    environment,
    ints,
    print_targets,
    run_sampled,
    versions,
)

SEQ_LEN = 2048
BATCH = 8
PREFETCH = 2  # torch's prefetch_factor: items each worker has made before the first is taken
MAX_CHARS = 6_000  # the largest document cut from a top-level block (at blank lines)
SPLIT_VERSION = 1  # bump when the documents change: the cached datasets go stale
PLANS_DIR = ".gristmill-plans"
PACKAGES = ("gristmill", "torch", "numpy", "mosaicml-streaming", "litdata", "tokenizers")
COLLATORS: dict[str, dict[str, Any]] = {  # a row's label: the Collator's keywords
    "Collator()": {},
    "padding_free=True": {"padding_free": True},
    "mask='flex'": {"mask": "flex"},
    "mask='bool'": {"mask": "bool"},
    "mask='padding'": {"mask": "padding"},
    "mask='additive'": {"mask": "additive"},
}
CHILD_TIMEOUT_S = 300


# --- the documents and the datasets ---------------------------------------------------------------

TOP_LEVEL = re.compile(r"^(?=@|def |async def |class )", re.MULTILINE)
DEFINES = re.compile(r"(?:@[^\n]*\n)*(?:async def|def|class) ")
BLANK_LINE = re.compile(r"(?<=\n)(?=\n)")


def documents(text: str) -> Iterator[str]:
    """One source file's documents: top-level blocks, the long ones cut at blank lines."""
    blocks: list[str] = []
    for part in TOP_LEVEL.split(text):
        if blocks and blocks[-1].startswith("@") and not DEFINES.match(blocks[-1]):
            blocks[-1] += part  # decorators stay with what they decorate
        else:
            blocks.append(part)
    for block in blocks:
        if len(block) <= MAX_CHARS:
            pieces = [block]
        else:
            pieces, piece = [], ""
            for para in BLANK_LINE.split(block):
                if piece and len(piece) + len(para) > MAX_CHARS:
                    pieces.append(piece)
                    piece = ""
                piece += para
            pieces.append(piece)
        yield from (p for p in pieces if p.strip())


def build_documents(corpus: Path, meta: dict[str, Any], work: Path) -> Path:
    """The corpus cut into documents, one ``{"text": ...}`` line each, cached."""
    key = hashlib.sha256(f"{meta['sha256']}:{SPLIT_VERSION}:{MAX_CHARS}".encode()).hexdigest()
    path = work / f"documents-{key[:12]}.jsonl"
    if path.exists():
        return path
    print("cutting the corpus into documents ...", flush=True)
    tmp = path.with_suffix(".tmp")
    with open(corpus, "rb") as src, open(tmp, "w", encoding="utf-8") as out:
        for line in src:
            for doc in documents(json.loads(line)["text"]):
                out.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def prepare(docs: Path, tokenizer: Path, out: Path, tokens_per_shard: int | None) -> Path:
    """A gristmill dataset of the documents (prepare does nothing when it is already there)."""
    import gristmill

    options = {} if tokens_per_shard is None else {"tokens_per_shard": tokens_per_shard}
    if not (out / "manifest.json").exists():
        print(f"preparing {out.name} ...", flush=True)
    gristmill.prepare(
        docs,
        out,
        tokenizer=str(tokenizer),
        normalize=False,  # code: keep the exact code points, as bench/prepare.py does
        workers=2,
        progress=False,
        overwrite=True,
        **options,
    )
    return out


def manifest_shards(path: Path) -> list[dict[str, Any]]:
    return json.loads((path / "manifest.json").read_text())["splits"]["train"]["shards"]


def task_lengths(path: Path) -> list[Any]:
    """Document lengths of each shard of a dataset whose shards are whole tasks."""
    import numpy as np

    return [
        np.diff(np.fromfile(path / shard["offsets"]["path"], "<i8"))
        for shard in manifest_shards(path)
    ]


def shards_at(lengths: list[Any], target: int) -> int:
    """Shards the writer makes at ``tokens_per_shard=target``: one ends at the first document
    boundary past the target, and every task ends its last one."""
    count = 0
    for task in lengths:
        pending = 0
        for n in task.tolist():
            pending += n
            if pending >= target:
                count, pending = count + 1, 0
        count += pending > 0
    return count


def target_for(lengths: list[Any], shards: int, ceiling: int) -> int:
    """The largest ``tokens_per_shard`` (up to ``ceiling``) that gives at least ``shards``."""
    lo, hi = 1, ceiling
    if shards_at(lengths, hi) >= shards:
        return hi
    while lo < hi:  # shards_at falls as the target grows
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if shards_at(lengths, mid) >= shards else (lo, mid - 1)
    return lo


def token_stream(dataset: Path, work: Path) -> tuple[Path, str]:
    """Every token of the dataset in shard order, one flat file (nanoGPT's ``train.bin``)."""
    import numpy as np

    manifest = json.loads((dataset / "manifest.json").read_text())
    path = work / f"tokens-{manifest['fingerprint'][:12]}.bin"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            for shard in manifest["splits"]["train"]["shards"]:
                out.write((dataset / shard["tokens"]["path"]).read_bytes())
        os.replace(tmp, path)
    return path, np.dtype(manifest["dtype"]).newbyteorder("<").str


def write_mds(stream: Path, dtype: str, out: Path, per_shard: int) -> Path:
    """Every whole window as an MDS sample, ``per_shard`` samples a shard."""
    if (out / "index.json").exists():
        return out
    import numpy as np
    from peers import import_streaming  # bench/peers.py, beside this script

    base = import_streaming()
    print(f"writing {out.name} ...", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    tokens = np.memmap(stream, dtype=dtype, mode="r")
    windows = len(tokens) // SEQ_LEN
    column = f"ndarray:{np.dtype(dtype).name}:{SEQ_LEN}"
    with base.MDSWriter(out=str(out), columns={"tokens": column}, size_limit=None) as w:
        # Room for exactly per_shard samples (they are all one size), half a sample to spare.
        per = len(w.encode_sample({"tokens": tokens[:SEQ_LEN]})) + w.extra_bytes_per_sample
        w.size_limit = w.new_shard_size + per_shard * per + per // 2
        for k in range(windows):
            w.write({"tokens": np.array(tokens[k * SEQ_LEN : (k + 1) * SEQ_LEN])})
    return out


def _litdata_windows(span: tuple[str, str, int, int]) -> Iterator[Any]:
    import numpy as np

    path, dtype, start, end = span
    tokens = np.memmap(path, dtype=dtype, mode="r")
    for k in range(start, end):
        yield np.array(tokens[k * SEQ_LEN : (k + 1) * SEQ_LEN])


def write_litdata(stream: Path, dtype: str, out: Path, per_chunk: int) -> Path:
    """Every whole window through ``optimize`` with ``TokensLoader``, ``per_chunk`` a chunk."""
    if litdata_written(out):
        return out
    import numpy as np
    from litdata import TokensLoader, optimize

    print(f"writing {out.name} ...", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = str(out / "cache")  # not ~/.lightning
    windows = os.path.getsize(stream) // np.dtype(dtype).itemsize // SEQ_LEN
    step = max(per_chunk, windows // 64)
    spans = [(str(stream), dtype, a, min(a + step, windows)) for a in range(0, windows, step)]
    optimize(
        fn=_litdata_windows,
        inputs=spans,
        output_dir=str(out / "data"),
        chunk_size=per_chunk * SEQ_LEN,  # tokens, with TokensLoader
        item_loader=TokensLoader(),
        num_workers=1,  # one writer: the chunks hold the windows in order
        verbose=False,
    )
    shutil.rmtree(out / "cache", ignore_errors=True)
    return out


def litdata_written(out: Path) -> bool:
    """Whether ``out`` holds a finished ``optimize``: an index that lists chunks (a failed run
    leaves one without any)."""
    try:
        index = json.loads((out / "data" / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(index.get("chunks"))


def write_hf(stream: Path, dtype: str, out: Path, per_shard: int) -> Path:
    """Every whole window as a row of a Hugging Face ``datasets`` dataset (one fixed-size list
    column, ``input_ids``) saved with ``save_to_disk`` in shards of ``per_shard`` rows."""
    if (out / "state.json").exists():
        return out
    import datasets
    import numpy as np
    import pyarrow as pa

    print(f"writing {out.name} ...", flush=True)
    datasets.disable_progress_bars()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokens = np.memmap(stream, dtype=dtype, mode="r")
    windows = len(tokens) // SEQ_LEN
    column = pa.FixedSizeListArray.from_arrays(pa.array(tokens[: windows * SEQ_LEN]), SEQ_LEN)
    table = datasets.table.InMemoryTable(pa.table({"input_ids": column}))
    datasets.Dataset(table).save_to_disk(str(tmp), num_shards=-(-windows // per_shard))
    os.replace(tmp, out)
    return out


def shard_count(kind: str, path: Path) -> int:
    if kind == "gristmill":
        return len(manifest_shards(path))
    if kind == "streaming":
        return len(json.loads((path / "index.json").read_text())["shards"])
    if kind == "datasets":
        return len(json.loads((path / "state.json").read_text())["_data_files"])
    return len(json.loads((path / "data" / "index.json").read_text())["chunks"])


# --- the children ---------------------------------------------------------------------------------


def setup_gristmill(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Counter]:
    import gristmill
    import gristmill.torch

    lap("import")
    ds = gristmill.open_dataset(spec["path"], seq_len=SEQ_LEN, packer=spec["packer"])
    lap("open")
    collator = gristmill.torch.Collator(**COLLATORS[spec["collator"]])
    loader = gristmill.torch.dataloader(
        ds, batch_size=BATCH, num_workers=spec["workers"], collate_fn=collator
    )
    lap("loader")
    if collator.padding_free:  # one row: every batch but an epoch's last has 8
        return iter(loader), lambda b: (BATCH, b["input_ids"].numel())  # no padding
    return iter(loader), lambda b: (len(b["input_ids"]), int(b["seq_lens"].sum()))


def setup_memmap(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Counter]:
    import numpy as np
    import torch

    lap("import")
    data = np.memmap(spec["path"], dtype=spec["dtype"], mode="r")
    block = SEQ_LEN + 1

    def get_batch() -> tuple[Any, Any]:  # nanoGPT's, windows stacked in numpy first
        ix = torch.randint(len(data) - block, (BATCH,)).tolist()
        both = torch.from_numpy(np.stack([data[i : i + block] for i in ix]).astype(np.int64))
        return both[:, :-1], both[:, 1:]

    lap("open")

    def batches() -> Iterator[tuple[Any, Any]]:
        while True:
            yield get_batch()

    if not spec["workers"]:
        lap("loader")
        return batches(), lambda b: (BATCH, b[0].numel())

    class Batches(torch.utils.data.IterableDataset):
        def __iter__(self) -> Iterator[tuple[Any, Any]]:  # torch seeds every worker apart
            return batches()

    loader = torch.utils.data.DataLoader(Batches(), batch_size=None, num_workers=spec["workers"])
    lap("loader")
    return iter(loader), lambda b: (BATCH, b[0].numel())


def setup_streaming(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Counter]:
    from peers import import_streaming  # bench/peers.py, beside this script

    base = import_streaming()
    import torch

    lap("import")
    ds = base.StreamingDataset(local=spec["path"], batch_size=BATCH, shuffle=True)
    lap("open")
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
    lap("loader")
    return iter(loader), lambda b: (len(b["tokens"]), b["tokens"].numel())


def setup_litdata(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Counter]:
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    lap("import")
    ds = StreamingDataset(
        str(Path(spec["path"]) / "data"),
        item_loader=TokensLoader(block_size=SEQ_LEN),
        shuffle=True,
    )
    lap("open")
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
    lap("loader")
    return iter(loader), lambda b: (len(b), b.numel())


def setup_datasets(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Counter]:
    """Hugging Face ``datasets``: ``load_from_disk`` in torch format under a shuffled torch
    DataLoader (what ``transformers.Trainer`` builds over a tokenized dataset)."""
    import datasets
    import torch

    lap("import")
    ds = datasets.load_from_disk(spec["path"]).with_format("torch")
    lap("open")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=spec["workers"]
    )
    lap("loader")
    return iter(loader), lambda b: (len(b["input_ids"]), b["input_ids"].numel())


Counter = Callable[[Any], tuple[int, int]]  # a batch -> (samples, real tokens)
SETUPS = {
    "gristmill": setup_gristmill,
    "memmap": setup_memmap,
    "streaming": setup_streaming,
    "litdata": setup_litdata,
    "datasets": setup_datasets,
}


def lap_timer() -> tuple[dict[str, float], Callable[[str], None]]:
    """The seconds of each named phase, and ``lap(name)``, which closes the phase ``name``."""
    laps: dict[str, float] = {}
    last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        laps[name] = now - last
        last = now

    return laps, lap


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One row: phases up to the first batch, then the steady rate (see the module docstring)."""
    laps, lap = lap_timer()

    batches, count = SETUPS[spec["system"]](spec, lap)
    next(batches)
    lap("first")
    result: dict[str, Any] = {**laps, "startup": sum(v for k, v in laps.items() if k != "import")}
    if spec.get("seconds", 0) <= 0:
        return result
    per_item = 1  # batches in one item of a worker's prefetch
    if spec["system"] == "gristmill":
        from gristmill.torch.loader import READ_AHEAD

        per_item = READ_AHEAD  # a gristmill worker makes a chunk of steps at a time
    try:
        for _ in range(PREFETCH * spec["workers"] * per_item):
            next(batches)
    except StopIteration:
        return {**result, "failed": "the epoch ended before the timing began"}
    gc.collect()  # the collection the imports left owing (see the module docstring)
    n = samples = tokens = 0
    began = time.perf_counter()
    deadline = began + spec["seconds"]
    for batch in batches:
        got = count(batch)
        n, samples, tokens = n + 1, samples + got[0], tokens + got[1]
        if time.perf_counter() >= deadline:
            break
    seconds = time.perf_counter() - began
    return {**result, "batches": n, "samples": samples, "tokens": tokens, "seconds": seconds}


def breakdown(spec: dict[str, Any]) -> dict[str, Any]:
    """``ds[i]`` per packer and each collator per batch, timed apart, in this process."""
    import numpy as np

    import gristmill
    import gristmill.torch

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for packer in ("first-fit", "concat-chunk"):
        ds = gristmill.open_dataset(spec["path"], seq_len=SEQ_LEN, packer=packer)
        picks = rng.integers(0, len(ds), 2_000).tolist()
        ds.batch(picks)  # maps the pages of these samples: neither timing below pays for it
        began = time.perf_counter()
        samples = [ds[i] for i in picks]
        getitem = (time.perf_counter() - began) / len(picks) * 1e6
        began = time.perf_counter()
        for k in range(0, len(picks), BATCH):
            ds.batch(picks[k : k + BATCH])
        row: dict[str, Any] = {
            "getitem_us": getitem,
            "batch_us": (time.perf_counter() - began) / len(picks) * 1e6,
            "segments": float(np.mean([len(s["seq_lens"]) for s in samples])),
        }
        for name, options in COLLATORS.items():
            collate = gristmill.torch.Collator(**options)
            groups = [samples[k : k + BATCH] for k in range(0, 40 * BATCH, BATCH)]
            began = time.perf_counter()
            for group in groups:
                collate(group)
            row[name] = (time.perf_counter() - began) / len(groups) * 1e3
        out[packer] = row
    return out


def child(spec: dict[str, Any]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers.py, for streaming
    try:
        result = breakdown(spec) if spec["system"] == "breakdown" else measure(spec)
    except ImportError as exc:
        result = {"skipped": f"{exc.name or exc} not installed"}
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # no waiting on loader threads and workers at exit


def run_child(
    spec: dict[str, Any],
    log: Path,
    *,
    script: str = __file__,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``script`` (this one unless named) in a fresh interpreter measuring ``spec`` (its
    ``--child``), with ``env`` added to the environment; its RESULT with the peak memory of its
    process tree (``peak_rss``, ``peak_pss``), or why there is none."""
    cmd = [sys.executable, script, "--child", json.dumps(spec)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    ran = run_sampled(cmd, log, env, timeout=CHILD_TIMEOUT_S)
    if ran["returncode"] is None:
        return {"failed": f"over {CHILD_TIMEOUT_S} s (see {log})"}
    output = log.read_text(errors="replace")
    found = [ln[7:] for ln in output.splitlines() if ln.startswith("RESULT ")]
    if ran["returncode"] or not found:
        tail = [ln for ln in output.splitlines() if ln.strip()][-1:]
        return {"failed": f"exit {ran['returncode']}: {''.join(tail)[:120]} (see {log})"}
    return {**json.loads(found[-1]), "peak_rss": ran["peak_rss"], "peak_pss": ran["peak_pss"]}


# --- the run --------------------------------------------------------------------------------------


class Bench:
    """The cached data of one run and the children that measure it."""

    def __init__(self, args: argparse.Namespace):
        import numpy as np

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from prepare import build_corpus, train_tokenizer  # bench/prepare.py

        self.work = args.work.resolve()
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        corpus, _, self.corpus = build_corpus(args.corpus_dir.resolve(), 150)
        self.tokenizer = train_tokenizer(args.corpus_dir.resolve(), corpus)
        self.docs = build_documents(corpus, self.corpus, self.work)
        tag = hashlib.sha256(self.docs.name.encode() + self.tokenizer.read_bytes()).hexdigest()
        self.tag = tag[:8]
        self.base = prepare(self.docs, self.tokenizer, self.work / f"gristmill-{self.tag}", None)
        self.manifest = json.loads((self.base / "manifest.json").read_text())
        self.stream, self.dtype = token_stream(self.base, self.work)
        itemsize = np.dtype(self.dtype).itemsize
        self.windows = os.path.getsize(self.stream) // itemsize // SEQ_LEN
        self.lengths = task_lengths(self.base)
        self.logs = 0
        self.loads: list[float] = []  # the 1-minute load average after every child

    def gristmill(self, shards: int) -> Path:
        default = self.manifest["provenance"]["config"]["tokens_per_shard"]
        target = target_for(self.lengths, shards, default)
        if target == default:
            return self.base
        return prepare(
            self.docs, self.tokenizer, self.work / f"gristmill-{self.tag}-{target}", target
        )

    def peer(self, kind: str, shards: int) -> Path:
        per = -(-self.windows // shards)
        out = self.work / f"{kind}-{self.tag}-{per}"
        write = {"streaming": write_mds, "litdata": write_litdata, "datasets": write_hf}[kind]
        return write(self.stream, self.dtype, out, per)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.logs += 1
        name = f"{self.logs:03d}-{spec['system']}-{spec.get('workers', 0)}.log"
        got = run_child(spec, self.work / "logs" / name)
        self.loads.append(os.getloadavg()[0])
        return got


def throughput_rows(bench: Bench, peers: bool) -> list[dict[str, Any]]:
    """Table 1's rows, before they run: a label, what it is, and its child's spec."""
    rows: list[dict[str, Any]] = []
    path = str(bench.gristmill(10))
    for packer, collators in (
        ("first-fit", list(COLLATORS)),
        ("concat-chunk", ["Collator()", "padding_free=True"]),
    ):
        for collator in collators:
            for workers in (0, 2):
                spec = {"system": "gristmill", "path": path, "packer": packer}
                spec |= {"collator": collator, "workers": workers}
                rows.append({"system": "gristmill", "what": f"{packer}, {collator}", "spec": spec})
    for workers, what in ((0, "get_batch loop"), (2, "get_batch, DataLoader")):
        spec = {"system": "memmap", "path": str(bench.stream), "dtype": bench.dtype}
        rows.append(
            {"system": "memmap ceiling", "what": what, "spec": {**spec, "workers": workers}}
        )
    if peers:
        for kind, what in (("streaming", "MDS, StreamingDataset"), ("litdata", "TokensLoader")):
            path = str(bench.peer(kind, 10))
            for workers in (0, 2):
                spec = {"system": kind, "path": path, "workers": workers}
                rows.append({"system": kind, "what": what, "spec": spec})
    return rows


def startup_rows(bench: Bench, counts: list[int], peers: bool) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        path = bench.gristmill(n)
        spec = {"system": "gristmill", "path": str(path), "packer": "first-fit"}
        spec |= {"collator": "Collator()", "workers": 0}
        shards = shard_count("gristmill", path)
        rows.append({"target": n, "system": "gristmill cold", "shards": shards, "spec": spec})
        rows.append({"target": n, "system": "gristmill warm", "shards": shards, "spec": spec})
        for kind in ("streaming", "litdata") if peers else ():
            path = bench.peer(kind, n)
            spec = {"system": kind, "path": str(path), "workers": 0}
            rows.append(
                {"target": n, "system": kind, "shards": shard_count(kind, path), "spec": spec}
            )
    return rows


def median_rate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median tokens/s (a failed run, if every run failed)."""
    done = sorted((r for r in runs if r.get("seconds")), key=lambda r: r["tokens"] / r["seconds"])
    return done[len(done) // 2] if done else runs[-1]


def rate(r: dict[str, Any], key: str) -> float | None:
    got = r.get("result", {})
    return got[key] / got["seconds"] if got.get("seconds") else None


def print_throughput(rows: list[dict[str, Any]]) -> float | None:
    ceiling = next((rate(r, "tokens") for r in rows if r["spec"]["system"] == "memmap"), None)
    print(
        "\n| loader | samples | workers | startup s | batches | samples/s | tokens/s | × ceiling |"
        "\n|---|---|--:|--:|--:|--:|--:|--:|"
    )
    for r in rows:
        got, workers = r["result"], r["spec"]["workers"]
        if "seconds" not in got:
            why = got.get("skipped") or got.get("failed") or got
            print(f"| {r['system']} | {r['what']} | {workers} | {why} | | | | |")
            continue
        tokens = rate(r, "tokens")
        slower = f"{ceiling / tokens:.1f}×" if ceiling and tokens else "-"
        print(
            f"| {r['system']} | {r['what']} | {workers} | {got['startup']:.2f} | {got['batches']:,}"
            f" | {rate(r, 'samples'):,.0f} | {tokens:,.0f} | {slower} |"
        )
    return ceiling


def print_breakdown(got: dict[str, Any]) -> None:
    if "first-fit" not in got:
        print(f"\nbreakdown: {got.get('skipped') or got.get('failed') or got}")
        return
    names = list(COLLATORS)
    print(
        "\n| packer | segments/sample | ds[i] µs | ds.batch µs/sample | "
        + " | ".join(f"{n} ms/batch" for n in names)
        + " |\n|---|--:|--:|--:|"
        + "--:|" * len(names)
    )
    for packer, row in got.items():
        print(
            f"| {packer} | {row['segments']:.2f} | {row['getitem_us']:,.0f} | "
            f"{row['batch_us']:,.1f} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |"
        )


def print_startup(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| shards | loader | import s | open s | loader s | first batch s | total s |"
        "\n|--:|---|--:|--:|--:|--:|--:|"
    )
    for r in rows:
        got = r["result"]
        if "startup" not in got:
            why = got.get("skipped") or got.get("failed") or got
            print(f"| {r['shards']:,} | {r['system']} | {why} | | | | |")
            continue
        print(
            f"| {r['shards']:,} | {r['system']} | {got['import']:.2f} | {got['open']:.3f} | "
            f"{got['loader']:.3f} | {got['first']:.3f} | **{got['startup']:.3f}** |"
        )


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median startup, so that its phases add up."""
    done = sorted((r for r in results if "startup" in r), key=lambda r: r["startup"])
    return done[len(done) // 2] if done else results[-1]


def check_targets(
    rows: list[dict[str, Any]], ceiling: float | None, starts: list[dict[str, Any]]
) -> list[tuple[str, bool | None]]:
    """The issue's targets, each with True (pass), False (fail) or None (not measured)."""
    out: list[tuple[str, bool | None]] = []

    def best(system: str, what: str = "") -> tuple[float | None, str]:
        found = [
            (rate(r, "tokens") or 0.0, f"{r['what']}, {r['spec']['workers']} workers")
            for r in rows
            if r["system"] == system and r["what"].startswith(what) and rate(r, "tokens")
        ]
        return max(found) if found else (None, "")

    default, default_at = best("gristmill", "first-fit, Collator()")
    fastest, fastest_at = best("gristmill", "first-fit")
    text = "gristmill within 2× of the memmap ceiling (tokens/s)"
    if ceiling and default and fastest:
        out.append(
            (
                f"{text}, default collator: {ceiling / default:.1f}× slower ({default_at})",
                ceiling / default <= 2,
            )
        )
        out.append(
            (
                f"{text}, fastest first-fit: {ceiling / fastest:.1f}× slower ({fastest_at})",
                ceiling / fastest <= 2,
            )
        )
    else:
        out.append((f"{text}: not measured", None))
    for peer in ("streaming", "litdata"):
        theirs, at = best(peer)
        text = f"gristmill ahead of {peer}"
        if theirs and default and fastest:
            out.append(
                (
                    f"{text}, default collator: {peer}'s best {theirs:,.0f} tokens/s ({at}); "
                    f"gristmill's {default:,.0f} ({default_at})",
                    default > theirs,
                )
            )
            out.append(
                (
                    f"{text}, fastest first-fit: {peer}'s best {theirs:,.0f} tokens/s; "
                    f"gristmill's {fastest:,.0f} ({fastest_at})",
                    fastest > theirs,
                )
            )
        else:
            out.append((f"{text}: not measured", None))
    top = [r for r in starts if r["system"].startswith("gristmill") and "startup" in r["result"]]
    text = "startup under 1 s at 10,000 shards"
    at = [r for r in top if r["target"] == 10_000]
    if at:
        parts = ", ".join(f"{r['system'][10:]} {r['result']['startup']:.2f} s" for r in at)
        out.append(
            (
                f"{text} ({at[0]['shards']:,} shards): {parts}",
                all(r["result"]["startup"] < 1 for r in at),
            )
        )
    else:
        out.append((f"{text}: not measured", None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-bench/loader"))
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path("/tmp/gristmill-bench"),
        help="bench/prepare.py's --work: its corpus and tokenizer.json",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds a row (5)")
    parser.add_argument("--shards", type=ints, default=[10, 100, 1_000, 10_000])
    parser.add_argument("--repeat", type=int, default=3, help="children per startup row (3)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="throughput: run every row this many times, in turn, and keep each row's median "
        "(3): the rows of one round run seconds apart, and other jobs on the machine come and go",
    )
    parser.add_argument("--no-peers", action="store_true", help="no streaming or litdata")
    parser.add_argument(
        "--only", default="throughput,breakdown,startup", help="comma-separated tables to run"
    )
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    notes: list[str] = []
    import gristmill  # noqa: F401  (fails early, not in every child)

    peers = not args.no_peers
    bench = Bench(args)
    train = bench.manifest["splits"]["train"]
    print(
        f"documents: {train['num_documents']:,} ({bench.docs.name}) from {bench.corpus['documents']:,}"
        f" files of the {bench.corpus['sources']}; {train['num_tokens']:,} {bench.manifest['dtype']}"
        f" tokens; median {train['length_stats']['p50']:.0f}, mean {train['length_stats']['mean']:.0f}"
        f", {bench.windows:,} whole {SEQ_LEN}-token windows"
    )
    only = set(args.only.split(","))
    if unknown := only - {"throughput", "breakdown", "startup"}:
        parser.error(f"--only: unknown table(s) {', '.join(sorted(unknown))}")
    rows = throughput_rows(bench, peers) if "throughput" in only else []
    starts = startup_rows(bench, args.shards, peers) if "startup" in only else []
    load = os.getloadavg()[0]

    if rows:
        print("throughput ...", flush=True)
    for round_ in range(args.rounds):
        for r in rows:
            got = bench.run({**r["spec"], "seconds": args.seconds})
            r.setdefault("runs", []).append(got)
            shown = f"{rate({'result': got}, 'tokens'):,.0f} tokens/s" if "seconds" in got else got
            print(
                f"  round {round_ + 1}: {r['system']}, {r['what']}, {r['spec']['workers']} "
                f"workers: {shown}",
                flush=True,
            )
    for r in rows:
        r["result"] = median_rate(r["runs"])
    parts: dict[str, Any] = {}
    if "breakdown" in only:
        print("where the time goes ...", flush=True)
        parts = bench.run({"system": "breakdown", "path": str(bench.gristmill(10))})
    if starts:
        print("startup ...", flush=True)
    for r in starts:
        results = []
        for _ in range(args.repeat):
            if r["system"] == "gristmill cold":
                shutil.rmtree(Path(r["spec"]["path"]) / PLANS_DIR, ignore_errors=True)
            results.append(bench.run(r["spec"]))
        r["result"], r["runs"] = median_of(results), results
        got = r["result"]
        shown = f"{got['startup']:.3f} s" if "startup" in got else got
        print(f"  {r['shards']:,} shards, {r['system']}: {shown}", flush=True)

    ceiling = None
    if rows:
        print(
            f"\n### Throughput: batches of {BATCH} × {SEQ_LEN} tokens ({bench.windows:,} windows)"
        )
        ceiling = print_throughput(rows)
    if parts:
        print("\n### Where gristmill's time goes (one process, 2,000 random samples)")
        print_breakdown(parts)
    if starts:
        print(
            f"\n### Startup: open → dataloader → first batch (0 workers), median of {args.repeat}"
        )
        print_startup(starts)
    targets = check_targets(rows, ceiling, starts)
    print_targets(targets)
    print("\n" + environment(load, PACKAGES))
    if bench.loads and max(bench.loads) > 1.5:
        notes.append(
            f"other work shared the {os.cpu_count()} cores: the 1-minute load average reached "
            f"{max(bench.loads):.1f} during the run (median {statistics.median(bench.loads):.1f})"
        )
    for note in notes:
        print(f"note: {note}")
    elapsed = time.perf_counter() - started
    print(f"whole run: {elapsed / 60:.1f} min (data cached in {bench.work})")
    if args.json:
        saved = {
            "corpus": bench.corpus,
            "documents": str(bench.docs),
            "tokens": train["num_tokens"],
            "windows": bench.windows,
            "versions": versions(PACKAGES),
            "notes": notes,
            "throughput": [{k: v for k, v in r.items()} for r in rows],
            "breakdown": parts,
            "startup": starts,
            "targets": [{"target": text, "pass": ok} for text, ok in targets],
            "seconds": elapsed,
        }
        args.json.write_text(json.dumps(saved, indent=1, default=str))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
