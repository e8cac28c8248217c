"""``gristmill inspect --plot``: the report's length histogram and packing efficiency, drawn.

It draws the numbers :func:`gristmill.cli.report.inspect_dataset` computed for the printed report
(nothing is computed again), with matplotlib's Agg canvas: no display, no pyplot state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gristmill.errors import GristmillError, MissingDependencyError
from gristmill.plugin.atomic import write_atomic


def require() -> None:
    """Fail now, before any work, when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib: pip install 'gristmill[plot]'"
        ) from None


def plot_report(report: dict[str, Any], split: str, path: str | os.PathLike[str]) -> Path:
    """Draw split ``split`` of an ``inspect`` report to ``path`` (its suffix picks the format:
    .png, .svg, .pdf…); written under a temporary name and renamed, so it is always whole."""
    require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    if fmt not in canvas.get_supported_filetypes():
        supported = ", ".join(sorted(canvas.get_supported_filetypes()))
        raise GristmillError(f"--plot {path}: cannot draw .{fmt} files; use one of {supported}")
    entry = report["splits"][split]
    tokenizer = report["tokenizer"]["spec"]
    fig.suptitle(
        f"{report['path']} [{split}]: {entry['documents']:,} documents, "
        f"{entry['tokens']:,} tokens ({tokenizer} tokenizer)"
    )
    lengths, packing = fig.subplots(1, 2, width_ratios=(3, 2))
    _histogram(lengths, entry)
    _packing(packing, entry["packing"])
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=120))
    return path


def _histogram(ax: Any, entry: dict[str, Any]) -> None:
    """Documents per power-of-two length bucket (``report.length_histogram``), on a log2 axis,
    with the median and every --seq-len marked."""
    buckets = entry["histogram"]
    ax.bar(
        [b["min"] for b in buckets],
        [b["documents"] for b in buckets],
        width=[b["max"] - b["min"] + 1 for b in buckets],
        align="edge",
        color="tab:blue",
        edgecolor="white",
    )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("documents")
    ax.set_title("document lengths")
    median = entry["length"]["p50"]
    ax.axvline(median, color="black", linestyle=":", label=f"median {median:,.0f}")
    for seq_len in dict.fromkeys(row["seq_len"] for row in entry["packing"]):
        ax.axvline(seq_len, color="tab:red", linestyle="--", label=f"seq_len {seq_len:,}")
    ax.legend(loc="upper right", fontsize="small")


def _packing(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Efficiency (tokens served / (samples × seq_len)) per packer, grouped by seq_len."""
    seq_lens = list(dict.fromkeys(row["seq_len"] for row in rows))
    packers = list(dict.fromkeys(row["packer"] for row in rows))
    width = 0.8 / max(1, len(packers))
    for i, packer in enumerate(packers):
        mine = {row["seq_len"]: row["efficiency"] for row in rows if row["packer"] == packer}
        xs = [j + (i - (len(packers) - 1) / 2) * width for j in range(len(seq_lens))]
        bars = ax.bar(xs, [100 * mine.get(s, 0.0) for s in seq_lens], width, label=packer)
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small")
    ax.set_xticks(range(len(seq_lens)), [f"{s:,}" for s in seq_lens])
    ax.set_xlabel("seq_len")
    ax.set_ylabel("% of sample tokens filled")
    ax.set_ylim(0, 125)  # room above the bars for the legend
    ax.set_yticks(range(0, 101, 20))
    overlong = rows[0]["overlong"] if rows else "truncate"
    ax.set_title(f"packing efficiency (overlong={overlong})")
    ax.legend(loc="upper center", ncol=len(packers), fontsize="small")
