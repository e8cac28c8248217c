"""Reading Arrow IPC files and a saved ``datasets`` folder against the same rows as Parquet.

    python bench/arrow_source.py [--work /tmp/gristmill-arrow-bench] [--size-mb 100] [--repeat 3]

The rows are real text: the Python sources of this interpreter's standard library cut into
pieces of about 1 KiB (``{"id": N, "text": ...}``), about --size-mb MB of text in all. They are
written once (kept under WORK between runs) as Parquet (snappy pages, row groups of 10,000
rows: pyarrow's defaults but for the row group size, which lets prepare split the file), as
Arrow IPC in the file format (no compression), in the stream format in batches of 1,000 rows (as
``datasets`` writes its files), as Feather (pyarrow's defaults: lz4), in the file format with
zstd buffers, and, where ``datasets`` is installed, as a folder that ``save_to_disk`` wrote.

Read rate: each layout opened as ``prepare`` opens it (``open_sources``) and its ``records()``
iterated to the end in this process, every row turned into a dict; the best of --repeat passes,
the layouts taking turns. MB/s counts the text's UTF-8 bytes, the same for every layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
import time
from pathlib import Path

from common import environment  # bench/common.py, beside this script

from gristmill.ingest.sources import open_sources
from gristmill.plugin.manager import get_manager

PIECE = 1024


def texts(size_mb: int) -> list[str]:
    """The standard library's sources in pieces of about PIECE characters, about size_mb MB."""
    out, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for start in range(0, len(text), PIECE):
            out.append(text[start : start + PIECE])
            total += len(out[-1].encode())
            if total >= size_mb * 1_000_000:
                return out
    return out


def write_layouts(work: Path, size_mb: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    paths = {
        "parquet": work / "rows.parquet",
        "arrow file": work / "rows.arrow",
        "arrow stream": work / "rows-stream.arrow",
        "feather (lz4)": work / "rows.feather",
        "arrow file (zstd)": work / "rows-zstd.arrow",
        "saved dataset": work / "saved",
    }
    done = work / ".complete"
    if done.exists():
        return {name: path for name, path in paths.items() if path.exists()}
    work.mkdir(parents=True, exist_ok=True)
    pieces = texts(size_mb)
    table = pa.table({"id": range(len(pieces)), "text": pieces})
    pq.write_table(table, paths["parquet"], row_group_size=10_000)
    with pa.ipc.new_file(paths["arrow file"], table.schema) as writer:
        writer.write_table(table)
    with pa.ipc.new_stream(paths["arrow stream"], table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    feather.write_feather(table, paths["feather (lz4)"])
    zstd = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_file(paths["arrow file (zstd)"], table.schema, options=zstd) as writer:
        writer.write_table(table)
    try:
        import datasets
    except ModuleNotFoundError:
        del paths["saved dataset"]
    else:
        datasets.disable_progress_bars()
        datasets.Dataset(table).save_to_disk(str(paths["saved dataset"]))
    done.touch()
    return paths


def read_once(spec: str) -> tuple[float, int, int]:
    """Seconds to read every row of ``spec`` as dicts, the rows, and their text's bytes."""
    start = time.perf_counter()
    rows = size = 0
    for source in open_sources([spec], get_manager()):
        for record, _ in source.records():
            rows += 1
            size += len(record["text"].encode())
    return time.perf_counter() - start, rows, size


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*")) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/gristmill-arrow-bench"))
    parser.add_argument("--size-mb", type=int, default=100, help="MB of text")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best one counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    layouts = write_layouts(args.work, args.size_mb)
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.repeat):
        for name, path in layouts.items():
            result = read_once(str(path))
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    rows = {best[name][1:] for name in best}
    assert len(rows) == 1, f"the layouts read different rows: {best}"
    print(f"{'layout':<20} {'on disk MB':>10} {'rows/s':>10} {'MB/s':>8}")
    results = []
    for name, (seconds, count, size) in best.items():
        on_disk = disk_bytes(layouts[name]) / 1e6
        print(f"{name:<20} {on_disk:>10.1f} {count / seconds:>10,.0f} {size / 1e6 / seconds:>8.0f}")
        results.append({"layout": name, "seconds": seconds, "rows": count, "text_bytes": size})
    print(environment(load, ["gristmill", "pyarrow", "datasets"]))
    if args.json:
        args.json.write_text(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
