"""Export to Megatron-LM's indexed format: ``gristmill export --to megatron`` (the
``contrib/gristmill-megatron`` plugin) against Megatron's own ``IndexedDatasetBuilder`` writing
the same documents.

    python bench/export.py [--dataset DIR] [--work /tmp/gristmill-bench/export] [--repeat 3]

The dataset defaults to the 10-shard one of ``bench/loader.py`` (84,328 documents of Python
source, 40 M uint16 tokens; run that first). gristmill's row times ``gristmill.export(DIR, OUT,
to="megatron", splits=["train"])`` end to end: reading the shards (each file checked against
its SHA-256 in the manifest first), writing ``train.bin`` and ``train.idx`` into a temporary
directory, ``export.json``, the rename (``GRISTMILL_FSYNC=0``, as Megatron's builder does not
sync either); a third row times that check alone. Megatron's row is given every document already in
memory as a numpy array (reading them is not timed) and times ``add_document`` for each, then
``finalize``: the writer of its ``tools/preprocess_data.py``. Both outputs are checked to be the
same bytes and read back with ``IndexedDataset``. Median of --repeat runs each, the page cache
warm. Needs torch, megatron-core and ``pip install contrib/gristmill-megatron``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from common import environment

PACKAGES = ("gristmill", "gristmill-megatron", "megatron-core", "torch", "numpy")


def timed(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        type=Path,
        help="a prepared dataset (default: bench/loader.py's 10-shard one under "
        "/tmp/gristmill-bench/loader)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-bench/export"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per row, median kept (3)")
    args = parser.parse_args()
    os.environ["GRISTMILL_FSYNC"] = "0"
    load = os.getloadavg()[0]

    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    import gristmill
    from gristmill.store.verify import check_file, files

    dataset = args.dataset
    if dataset is None:
        found = sorted(Path("/tmp/gristmill-bench/loader").glob("gristmill-*[0-9a-f]"))
        if not found:
            parser.error("no --dataset, and bench/loader.py has not prepared its own yet")
        dataset = found[0]
    docs = gristmill.open_dataset(dataset).documents
    n, tokens = docs.num_documents, int(docs.lengths().sum())
    args.work.mkdir(parents=True, exist_ok=True)
    ours = args.work / "gristmill"

    def export() -> None:
        gristmill.export(dataset, ours, to="megatron", splits=["train"], overwrite=True)

    gristmill_s = timed(export, args.repeat)
    record = (ours / "export.json").read_text()
    dtype = np.uint16 if '"dtype": "uint16"' in record else np.int32

    arrays = [docs.document(i)[0].astype(dtype) for i in range(n)]  # in memory, not timed
    theirs = args.work / "megatron"

    def megatron() -> None:
        shutil.rmtree(theirs, ignore_errors=True)
        theirs.mkdir()
        builder = IndexedDatasetBuilder(str(theirs / "train.bin"), dtype=dtype)
        for ids in arrays:
            builder.add_document(torch.from_numpy(ids), [len(ids)])
        builder.finalize(str(theirs / "train.idx"))

    megatron_s = timed(megatron, args.repeat)

    manifest = gristmill.open_dataset(dataset).manifest
    entries = [f for shard in manifest["splits"]["train"]["shards"] for f in files(shard)]

    # What export's check of the shards costs the first time (part of gristmill's row): one
    # hashing pass; later exports on this machine find the files' stamps (gristmill.plugin.integrity).
    def hashing() -> None:
        for entry in entries:
            assert not list(check_file(dataset, entry, lambda nbytes: None)), entry["path"]

    hashing_s = timed(hashing, args.repeat)
    same = all(
        (ours / f"train.{ext}").read_bytes() == (theirs / f"train.{ext}").read_bytes()
        for ext in ("bin", "idx")
    )
    read = IndexedDataset(str(ours / "train"))
    assert len(read) == n and np.array_equal(read[n - 1], arrays[-1]), "read back differs"
    size = (ours / "train.bin").stat().st_size + (ours / "train.idx").stat().st_size

    print(f"dataset: {dataset} ({n:,} documents, {tokens:,} tokens, {np.dtype(dtype).name})")
    print("\n| writer | s | documents/s | tokens/s | MB/s written |")
    print("|---|--:|--:|--:|--:|")
    for name, seconds in (
        ("gristmill export --to megatron (from the shards)", gristmill_s),
        ("Megatron IndexedDatasetBuilder (documents in memory)", megatron_s),
        ("of gristmill's row: the SHA-256 check of the split's files", hashing_s),
    ):
        print(
            f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {tokens / seconds:,.0f} | "
            f"{size / seconds / 1e6:,.0f} |"
        )
    print(
        f"\nsame bytes as Megatron's writer: {same}; read back with IndexedDataset: {len(read):,}"
    )
    print(f"median of {args.repeat} runs each\n" + environment(load, PACKAGES))


if __name__ == "__main__":
    main()
