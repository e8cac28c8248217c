"""Throughput of the first slice on the built-in sample: prepare, open, and random access.

    python bench/prepare_sample.py [--repeat 3]

Prints tokens/s for `prepare` (sample:stdlib, byte tokenizer: mostly reading, mapping and
writing, as the byte tokenizer is nearly free), the time to open the dataset, and samples/s for
random `ds[i]` reads. Figures are the median of --repeat runs, all taken in this one process.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import gristmill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--source", default="sample:stdlib")
    args = parser.parse_args()
    prep, opens, reads = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            manifest = gristmill.prepare(args.source, out, progress=False)
            prep.append(time.perf_counter() - start)
            start = time.perf_counter()
            ds = gristmill.open_dataset(out, seq_len=2048)
            opens.append(time.perf_counter() - start)
            order = np.random.default_rng(0).integers(0, len(ds), 20_000)
            start = time.perf_counter()
            for i in order:
                ds[int(i)]
            reads.append(len(order) / (time.perf_counter() - start))
    train = manifest["splits"]["train"]
    tokens, seconds = train["num_tokens"], statistics.median(prep)
    print(f"source {args.source}: {train['num_documents']:,} documents, {tokens:,} tokens")
    print(f"prepare: {seconds:.2f} s  ->  {tokens / seconds / 1e6:.2f} M tokens/s")
    print(f"open_dataset: {statistics.median(opens) * 1e3:.1f} ms")
    print(f"random ds[i] at seq_len 2048: {statistics.median(reads):,.0f} samples/s")


if __name__ == "__main__":
    main()
