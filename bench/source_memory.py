"""Peak memory of reading a source against its size: it must stay flat.

    python bench/source_memory.py [--base-mib 32] [--scales 1,4,16] [--row-group-rows 2048]

Writes the same rows (about 1 KiB of text each) as JSON Lines and as Parquet at each scale of a
base size, then reads every file through its registered source (``open_sources`` + ``records()``,
every row turned into a dict) in a fresh process and prints that process's peak RSS
(``ru_maxrss``). A "baseline" process opens the same source and loads its libraries but reads no
row: peak minus baseline is what reading costs. The base size is at least 10x both the JSONL
reader's chunk (``gristmill.plugin.files.CHUNK``) and a Parquet row group, so even scale 1 streams many
buffers; a reader that held the file would grow 16x from scale 1 to 16.

``--one-row-group`` also writes each Parquet file as a single row group: memory then follows what
the reader holds of one row group, which the column-chunk buffer keeps bounded too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROW_CHARS = 1024
CHUNK = 1 << 20  # gristmill.plugin.files.CHUNK, the JSONL read size; not imported: see run_child


def rows(total_bytes: int, block_rows: int, seed: int):
    """Blocks of ``(ids, texts)`` adding up to about ``total_bytes`` of text."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", np.uint8)
    count = total_bytes // ROW_CHARS
    for start in range(0, count, block_rows):
        n = min(block_rows, count - start)
        chars = letters[rng.integers(0, len(letters), n * ROW_CHARS)].tobytes().decode()
        texts = [chars[i * ROW_CHARS : (i + 1) * ROW_CHARS] for i in range(n)]
        yield np.arange(start, start + n), texts


def write_files(root: Path, scale: int, args: argparse.Namespace) -> dict[str, Path]:
    """Child process: write the files of one scale (see :func:`run_child` for why a child)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = args.base_mib * scale << 20
    out = {"jsonl": root / f"x{scale}.jsonl", "parquet": root / f"x{scale}.parquet"}
    if args.one_row_group:
        out["parquet-1rg"] = root / f"x{scale}-1rg.parquet"
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    writers = {
        name: pq.ParquetWriter(path, schema) for name, path in out.items() if name != "jsonl"
    }
    with open(out["jsonl"], "w", encoding="utf-8") as jsonl:
        for ids, texts in rows(size, args.row_group_rows, seed=scale):
            jsonl.writelines(
                json.dumps({"id": int(i), "text": t}) + "\n" for i, t in zip(ids, texts)
            )
            table = pa.table({"id": ids, "text": texts}, schema=schema)
            writers["parquet"].write_table(table, row_group_size=args.row_group_rows)
            if "parquet-1rg" in writers:
                writers["parquet-1rg"].write_table(table, row_group_size=1 << 30)
    for writer in writers.values():
        writer.close()
    return out


def run_child(*args: str) -> dict:
    """Run this script with ``args`` in a fresh interpreter; return the JSON it prints.

    Linux carries ``ru_maxrss`` across ``exec`` from the process that spawned it, so this parent
    stays small (standard library only) and leaves writing the files to a child too: each
    reader's peak is then its own.
    """
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def read(path: str, baseline: bool) -> None:
    """Child process: read every record of ``path``; print rows, seconds and peak RSS."""
    from gristmill.ingest.sources import open_sources
    from gristmill.plugin.manager import get_manager

    [source] = open_sources([path], get_manager())
    if hasattr(source, "schema"):
        source.schema()  # loads pyarrow and reads the footer: part of the baseline
    count = chars = 0
    start = time.perf_counter()
    if not baseline:
        for record, _ in source.records():
            count += 1
            chars += len(record["text"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": count, "chars": chars, "seconds": seconds, "peak_kib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-mib", type=int, default=32, help="text MiB at scale 1")
    parser.add_argument("--scales", default="1,4,16", help="scale factors of the base size")
    parser.add_argument("--row-group-rows", type=int, default=2048, help="rows per row group")
    parser.add_argument("--one-row-group", action="store_true", help="also one-row-group files")
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temp dir)")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--read", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        read(args.read, args.baseline)
        return
    if args.write:
        files = write_files(args.write, args.scale, args)
        print(json.dumps({name: str(path) for name, path in files.items()}))
        return

    group_mib = args.row_group_rows * ROW_CHARS / (1 << 20)
    if args.base_mib << 20 < 10 * max(CHUNK, args.row_group_rows * ROW_CHARS):
        parser.error(
            f"--base-mib must be at least 10x both the JSONL chunk ({CHUNK >> 20} MiB) and the "
            f"row group ({group_mib:g} MiB)"
        )
    print(
        f"base {args.base_mib} MiB of text; JSONL chunk {CHUNK >> 20} MiB; Parquet row group "
        f"{args.row_group_rows} rows = {group_mib:g} MiB of text"
    )
    print(
        f"{'format':<12}{'scale':>6}{'file MiB':>10}{'rows':>10}{'baseline MiB':>14}"
        f"{'peak MiB':>10}{'read MiB':>10}{'rows/s':>11}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for scale in map(int, args.scales.split(",")):
            passed = [
                "--base-mib",
                str(args.base_mib),
                "--row-group-rows",
                str(args.row_group_rows),
            ]
            if args.one_row_group:
                passed.append("--one-row-group")
            written = run_child("--write", tmp, "--scale", str(scale), *passed)
            files = {name: Path(path) for name, path in written.items()}
            for name, path in files.items():
                base = run_child("--read", str(path), "--baseline")["peak_kib"] / 1024
                result = run_child("--read", str(path))
                peak = result["peak_kib"] / 1024
                print(
                    f"{name:<12}{scale:>6}{os.path.getsize(path) / (1 << 20):>10.0f}"
                    f"{result['rows']:>10,}{base:>14.0f}{peak:>10.0f}{peak - base:>10.0f}"
                    f"{result['rows'] / result['seconds']:>11,.0f}"
                )
            for path in files.values():
                path.unlink()


if __name__ == "__main__":
    main()
