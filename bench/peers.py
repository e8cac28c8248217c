"""The contenders of ``bench/prepare.py``: the same job, each the way its project does it.

The job: read the corpus (JSON Lines, one ``{"text": ...}`` per line), tokenize every text with
``WORK/tokenizer.json`` (the library adds no special tokens), append the EOS id to every document,
and store the ids so that they can be read back. ``JOBS[name](ctx)`` runs in a fresh child process
and returns ``{"seconds", "tokens", "docs"}``; it times the job only, not its imports, and raises
``ImportError`` when its peer is not installed. ``READERS[name](out, eos, digest)`` reads what a
job stored back, document by document, into a :class:`Digest` for the token check.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import json
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 512  # texts per encode_batch call (gristmill's batch too)
Context = dict[str, Any]


class Digest:
    """Tokens, documents and two hashes of a tokenized corpus: in order, and order-free.

    ``ordered`` hashes the concatenated ids (as little-endian uint32) of every document in order;
    ``unordered`` hashes the sorted per-document hashes, for peers that do not keep input order.
    """

    def __init__(self) -> None:
        self.stream = hashlib.blake2b(digest_size=16)
        self.docs: list[bytes] = []
        self.tokens = 0

    def add(self, ids: Iterable[int] | np.ndarray) -> None:
        data = np.asarray(ids).astype("<u4").tobytes()
        self.stream.update(data)
        self.docs.append(hashlib.blake2b(data, digest_size=8).digest())
        self.tokens += len(data) // 4

    def result(self) -> dict[str, Any]:
        unordered = hashlib.blake2b(b"".join(sorted(self.docs)), digest_size=16).hexdigest()
        ordered = self.stream.hexdigest()
        return {
            "tokens": self.tokens,
            "docs": len(self.docs),
            "ordered": ordered,
            "unordered": unordered,
        }


def load_tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def lines(path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The corpus lines (bytes) from ``start`` up to ``end``, both at line starts."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for line in f:
            if end is not None and pos >= end:
                break
            pos += len(line)
            yield line


def line_ranges(path: str, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous byte ranges of the file, cut at line starts, in file order."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(size * k // parts, cuts[-1]))
            f.readline()
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def fresh(out: str) -> Path:
    shutil.rmtree(out, ignore_errors=True)
    Path(out).mkdir(parents=True)
    return Path(out)


# Worker-process state of the Pool-based peers: one tokenizer per process, built once.
_TOK: Any = None
_EOS = 0


def _init_worker(path: str, eos: int) -> None:
    global _TOK, _EOS
    _TOK, _EOS = load_tokenizer(path), eos


def _encode_line(line: bytes | str) -> list[int]:
    ids = _TOK.encode(json.loads(line)["text"], add_special_tokens=False).ids
    ids.append(_EOS)
    return ids


def _encode_line_u16(line: bytes) -> np.ndarray:
    return np.array(_encode_line(line), dtype=np.uint16)


# --- jobs ---------------------------------------------------------------------------------------


def job_encode(ctx: Context) -> dict[str, Any]:
    """The reference: ``encode_batch_fast`` on texts already in memory; no reading, no writing.

    Threads come from the environment the parent sets (``RAYON_NUM_THREADS``,
    ``TOKENIZERS_PARALLELISM``). The ids are hashed for the token check outside the timer.
    """
    tok = load_tokenizer(ctx["tokenizer"])
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    texts = [json.loads(line)["text"] for line in lines(ctx["corpus"])]
    digest, lengths, seconds, prefix = Digest(), [], 0.0, None
    for start in range(0, len(texts), BATCH):
        began = time.perf_counter()
        ids = [e.ids for e in encode(texts[start : start + BATCH], add_special_tokens=False)]
        seconds += time.perf_counter() - began
        for doc in ids:
            doc.append(ctx["eos"])
            digest.add(doc)
            lengths.append(len(doc))
            if len(lengths) == ctx.get("prefix_docs"):
                prefix = digest.result()
    if ctx.get("lengths"):
        np.save(ctx["lengths"], np.array(lengths, np.int64))
    return {"seconds": seconds, **digest.result(), "digest": digest.result(), "prefix": prefix}


def job_floor(ctx: Context) -> dict[str, Any]:
    """Read and parse every line, and write as many uint16 tokens (zeros) as the reference has.

    Each line's ``fields`` (an option, ``["text"]`` by default) are looked up."""
    lengths = np.load(ctx["lengths"])
    fields = ctx.get("floor", {}).get("fields", ["text"])
    out = fresh(ctx["out"])
    began = time.perf_counter()
    zeros = np.zeros(int(lengths.max()), np.uint16)
    docs = 0
    with open(out / "tokens.bin", "wb") as f:
        for line, n in zip(lines(ctx["corpus"]), lengths.tolist()):
            record = json.loads(line)
            for key in fields:
                record[key]
            f.write(zeros[:n])
            docs += 1
    np.concatenate([[0], np.cumsum(lengths)]).tofile(out / "offsets.bin")
    return {"seconds": time.perf_counter() - began, "tokens": int(lengths.sum()), "docs": docs}


def job_gristmill(ctx: Context) -> dict[str, Any]:
    import gristmill

    kwargs = dict(ctx["gristmill"])
    out = fresh(ctx["out"])
    began = time.perf_counter()
    manifest = gristmill.prepare(
        ctx["corpus"], out, tokenizer=ctx["tokenizer"], progress=False, overwrite=True, **kwargs
    )
    train = manifest["splits"]["train"]
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "tokens": train["num_tokens"], "docs": train["num_documents"]}


def _datasets_job(ctx: Context) -> tuple[Any, Path, float, Any]:
    """What a ``datasets`` job starts from: the module (its bars off), a fresh output folder,
    the clock started, and the tokenizer as transformers loads it (timed: part of the job)."""
    import datasets
    from transformers import PreTrainedTokenizerFast

    datasets.disable_progress_bars()
    out = fresh(ctx["out"])
    began = time.perf_counter()
    tok = PreTrainedTokenizerFast(tokenizer_file=ctx["tokenizer"], eos_token="<|endoftext|>")
    return datasets, out, began, tok


def job_datasets(ctx: Context) -> dict[str, Any]:
    """``load_dataset("json")`` + ``.map(batched=True, num_proc=2)``, in a fresh cache."""
    datasets, out, began, tok = _datasets_job(ctx)
    eos = ctx["eos"]

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        ids = tok(batch["text"], add_special_tokens=False, return_attention_mask=False)
        return {"input_ids": [[*doc, eos] for doc in ids["input_ids"]]}

    raw = datasets.load_dataset("json", data_files=ctx["corpus"], split="train", cache_dir=out)
    done = raw.map(tokenize, batched=True, num_proc=ctx["procs"], remove_columns=["text"])
    seconds = time.perf_counter() - began
    files = [entry["filename"] for entry in done.cache_files]
    (out / "mapped-files.json").write_text(json.dumps(files))
    return {"seconds": seconds, "docs": len(done)}


def job_datasets_sft(ctx: Context) -> dict[str, Any]:
    """Prompt/completion pairs the way TRL's ``SFTTrainer`` tokenizes them, as a
    ``datasets.map(batched=True, num_proc=2)``: the prompt's ids, the ids of prompt and
    completion together with the EOS appended, and a ``completion_mask`` of 0 over the prompt's
    tokens and 1 after. The text is gristmill's plain template, ``{prompt}\n{completion}``."""
    import pyarrow.compute as pc

    datasets, out, began, tok = _datasets_job(ctx)
    eos = ctx["eos"]

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        heads = [f"{p}\n" for p in batch["prompt"]]
        texts = [h + c for h, c in zip(heads, batch["completion"])]
        kw = {"add_special_tokens": False, "return_attention_mask": False}
        prompts = tok(heads, **kw)["input_ids"]
        ids = [[*doc, eos] for doc in tok(texts, **kw)["input_ids"]]
        masks = [[0] * len(p) + [1] * (len(d) - len(p)) for p, d in zip(prompts, ids)]
        return {"input_ids": ids, "completion_mask": masks}

    raw = datasets.load_dataset("json", data_files=ctx["corpus"], split="train", cache_dir=out)
    done = raw.map(tokenize, batched=True, num_proc=ctx["procs"], remove_columns=raw.column_names)
    seconds = time.perf_counter() - began
    tokens = int(pc.sum(pc.list_value_length(done.data.column("input_ids"))).as_py())
    return {"seconds": seconds, "tokens": tokens, "docs": len(done)}


def _litdata_fn(span: tuple[str, int, int, str, int]) -> Iterator[np.ndarray]:
    path, start, end, tokenizer, eos = span
    if _TOK is None:
        _init_worker(tokenizer, eos)
    for line in lines(path, start, end):
        yield _encode_line_u16(line)


def job_litdata(ctx: Context) -> dict[str, Any]:
    """litdata ``optimize``: a generator per input yields one uint16 array per document."""
    from litdata import optimize

    out = fresh(ctx["out"])
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = str(out / "cache")  # not ~/.lightning
    began = time.perf_counter()
    # Many inputs, so that litdata can balance them over its workers.
    spans = [
        (ctx["corpus"], a, b, ctx["tokenizer"], ctx["eos"])
        for a, b in line_ranges(ctx["corpus"], 8 * ctx["procs"])
    ]
    optimize(
        fn=_litdata_fn,
        inputs=spans,
        output_dir=str(out / "data"),
        chunk_bytes="64MB",
        num_workers=ctx["procs"],
        verbose=False,
    )
    return {"seconds": time.perf_counter() - began}


def import_streaming() -> types.ModuleType:
    """``streaming.base``, even where ``import streaming`` fails on its vision module.

    ``streaming/__init__.py`` imports ``streaming.vision``, which imports torchvision; PyPI's
    torchvision wheels are CUDA builds that cannot load beside the CPU torch wheel. The writer
    needs none of it: load the package without its ``__init__``.
    """
    try:
        return importlib.import_module("streaming.base")
    except (RuntimeError, OSError):
        pass
    for name in [m for m in sys.modules if m == "streaming" or m.startswith("streaming.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("streaming")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("streaming is not installed")
    package = types.ModuleType("streaming")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["streaming"] = package
    return importlib.import_module("streaming.base")


def _streaming_part(part: tuple[str, int, int, str, str, int]) -> int:
    from streaming.base import MDSWriter

    path, start, end, out, tokenizer, eos = part
    _init_worker(tokenizer, eos)
    docs = 0
    with MDSWriter(out=out, columns={"tokens": "ndarray:uint16"}, compression=None) as writer:
        for line in lines(path, start, end):
            writer.write({"tokens": _encode_line_u16(line)})
            docs += 1
    return docs


def job_streaming(ctx: Context) -> dict[str, Any]:
    """MosaicML streaming: one ``MDSWriter`` per process over a slice, then ``merge_index``
    (their documented way to convert in parallel)."""
    import multiprocessing

    import_streaming()
    from streaming.base.util import merge_index

    out = fresh(ctx["out"])
    began = time.perf_counter()
    ranges = line_ranges(ctx["corpus"], ctx["procs"])
    parts = [
        (ctx["corpus"], a, b, str(out / f"part-{i:02d}"), ctx["tokenizer"], ctx["eos"])
        for i, (a, b) in enumerate(ranges)
    ]
    with multiprocessing.Pool(ctx["procs"]) as pool:
        docs = sum(pool.map(_streaming_part, parts))
    merge_index([str(out / f"part-{i:02d}" / "index.json") for i in range(len(parts))], str(out))
    return {"seconds": time.perf_counter() - began, "docs": docs}


def job_megatron(ctx: Context) -> dict[str, Any]:
    """Megatron's ``tools/preprocess_data.py`` pattern: ``Pool.imap(encode, lines, 32)`` and
    megatron-core's ``IndexedDatasetBuilder`` writing ``.bin``/``.idx``."""
    import multiprocessing

    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    out = fresh(ctx["out"])
    prefix = str(out / "corpus_text_document")
    began = time.perf_counter()
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)  # vocab < 65,500
    with (
        open(ctx["corpus"], encoding="utf-8") as fin,
        multiprocessing.Pool(
            ctx["procs"], initializer=_init_worker, initargs=(ctx["tokenizer"], ctx["eos"])
        ) as pool,
    ):
        tokens = docs = 0
        for ids in pool.imap(_encode_line, fin, 32):
            builder.add_document(ids, [len(ids)])
            tokens += len(ids)
            docs += 1
    builder.finalize(prefix + ".idx")
    return {"seconds": time.perf_counter() - began, "tokens": tokens, "docs": docs}


def job_nanogpt(ctx: Context) -> dict[str, Any]:
    """nanoGPT's ``prepare.py`` pattern: encode in a process pool, then one uint16 ``np.memmap``
    of every document's ids (EOS-terminated), filled in order."""
    import multiprocessing

    out = fresh(ctx["out"])
    began = time.perf_counter()
    with multiprocessing.Pool(
        ctx["procs"], initializer=_init_worker, initargs=(ctx["tokenizer"], ctx["eos"])
    ) as pool:
        docs = list(pool.imap(_encode_line_u16, lines(ctx["corpus"]), 64))
    total = sum(len(d) for d in docs)
    arr = np.memmap(out / "train.bin", dtype=np.uint16, mode="w+", shape=(total,))
    at = 0
    for doc in docs:
        arr[at : at + len(doc)] = doc
        at += len(doc)
    arr.flush()
    return {"seconds": time.perf_counter() - began, "tokens": total, "docs": len(docs)}


JOBS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "encode": job_encode,
    "floor": job_floor,
    "gristmill": job_gristmill,
    "datasets": job_datasets,
    "datasets-sft": job_datasets_sft,
    "litdata": job_litdata,
    "streaming": job_streaming,
    "megatron": job_megatron,
    "nanogpt": job_nanogpt,
}


# --- readers ------------------------------------------------------------------------------------


def read_gristmill(out: Path, eos: int, digest: Digest) -> None:
    import gristmill

    docs = gristmill.open_dataset(out, packer="none").documents
    for i in range(docs.num_documents):
        digest.add(docs.document(i)[0])


def read_datasets(out: Path, eos: int, digest: Digest) -> None:
    import pyarrow as pa

    for name in json.loads((out / "mapped-files.json").read_text()):
        with pa.memory_map(name) as source:
            for batch in pa.ipc.open_stream(source):
                column = batch.column("input_ids")
                flat = column.flatten().to_numpy()
                bounds = column.offsets.to_numpy() - column.offsets[0].as_py()
                for a, b in itertools.pairwise(bounds):
                    digest.add(flat[a:b])


def read_litdata(out: Path, eos: int, digest: Digest) -> None:
    from litdata import StreamingDataset

    ds = StreamingDataset(str(out / "data"))
    for i in range(len(ds)):
        digest.add(ds[i])


def read_streaming(out: Path, eos: int, digest: Digest) -> None:
    import_streaming()
    from streaming.base import LocalDataset

    ds = LocalDataset(local=str(out))
    for i in range(len(ds)):
        digest.add(ds[i]["tokens"])


def read_megatron(out: Path, eos: int, digest: Digest) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(out / "corpus_text_document"))
    for i in range(len(ds)):
        digest.add(ds[i])


def read_nanogpt(out: Path, eos: int, digest: Digest) -> None:
    """One stream of ids: documents are cut after each EOS (what a reader of it would do)."""
    ids = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    for doc in np.split(ids, np.flatnonzero(ids == eos) + 1):
        if len(doc):
            digest.add(doc)


READERS: dict[str, Callable[[Path, int, Digest], None]] = {
    "gristmill": read_gristmill,
    "datasets": read_datasets,
    "litdata": read_litdata,
    "streaming": read_streaming,
    "megatron": read_megatron,
    "nanogpt": read_nanogpt,
}
