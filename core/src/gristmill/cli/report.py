"""What ``gristmill inspect`` and ``gristmill plugins`` print."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import DatasetError
from gristmill.ingest.splits import in_order
from gristmill.options import DatasetOptions
from gristmill.plugin.components import KINDS, RECORD_TYPES, PackerType, PresetType
from gristmill.plugin.manager import get_manager
from gristmill.plugin.overlong import check_policy
from gristmill.plugin.remote import mirror_of
from gristmill.plugin.remote.mirror import MANIFEST, listing
from gristmill.serve.dataset import Dataset, how_to_make, where
from gristmill.store.manifest import read_manifest

log = logging.getLogger("gristmill")

NO_LOSS_OPEN, NO_LOSS_CLOSE = "⟦", "⟧"
DECODE_CHARS = 600  # per decoded document: enough to judge it, short enough to skim
BAR_WIDTH = 40


def length_histogram(lengths: np.ndarray) -> list[dict[str, int]]:
    """Document counts per power-of-two length bucket ``[lo, hi]``."""
    if not len(lengths):
        return []
    buckets = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(buckets)
    return [
        {"min": 1 << b, "max": (1 << (b + 1)) - 1, "documents": int(c)}
        for b, c in enumerate(counts)
        if c
    ]


def packing_table(
    dataset: Dataset, seq_lens: Sequence[int], overlong: str = "truncate"
) -> list[dict[str, Any]]:
    """Per packer and ``seq_len`` over ``dataset``'s split: samples, efficiency (tokens served /
    (samples × seq_len)), the documents longer than ``seq_len``, what the ``overlong`` policy
    leaves out (tokens truncated away, documents dropped), and the samples that would carry no
    loss (every label -100)."""
    manager = dataset.manager  # the one that opened it, not the process-wide one
    lengths = dataset.document_lengths()
    total = int(lengths.sum())
    rows = []
    for seq_len in seq_lens:
        for name, record in sorted(manager.components(PackerType).items()):
            plan = record.factory(overlong=overlong).plan(lengths, seq_len)
            served = int(plan.seg_len.sum())
            rows.append(
                {
                    "packer": name,
                    "seq_len": seq_len,
                    "overlong": overlong,
                    "samples": len(plan),
                    "efficiency": round(served / (len(plan) * seq_len), 4) if len(plan) else 0.0,
                    "overlong_documents": int((lengths > seq_len).sum()),
                    "dropped_documents": plan.dropped,
                    "tokens_left_out": total - served,
                    "samples_without_loss": int(
                        dataset.without_loss(plan, lengths, restart=record.restart).sum()
                    ),
                }
            )
    return rows


def decode_with_mask(dataset: Dataset, index: int) -> str:
    """A document's text with the tokens that carry no loss between ⟦ and ⟧."""
    ids, mask = dataset.documents.document(index)
    tok = dataset.tokenizer
    if mask is None:
        return tok.decode(ids)
    cuts = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
    parts = []
    for start, end in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(ids)]])):
        text = tok.decode(ids[start:end])
        parts.append(text if mask[start] else f"{NO_LOSS_OPEN}{text}{NO_LOSS_CLOSE}")
    return "".join(parts)


def inspect_dataset(
    directory: str | os.PathLike[str],
    *,
    decode: int = 2,
    split: str | None = None,
    seq_lens: Sequence[int] = (2048,),
    overlong: str = "truncate",
    as_json: bool = False,
    plot: str | os.PathLike[str] | None = None,
    remote: DatasetOptions | None = None,
) -> int:
    """``gristmill inspect``: print the report (``as_json``: as one JSON object); ``plot``:
    also draw its length histogram and packing efficiency of the decoded split to that file.

    ``directory`` may be a URL, read through its mirror with the ``storage_options`` and
    ``cache_limit`` of ``remote``: opening it fetches the manifest and the small files every
    open reads (tokenizer, offsets index, metadata); the report then fetches the shard files
    of the documents it decodes and what counting the samples without loss reads where the
    dataset has loss masks (its loss index, or every mask where it has none), no others."""
    if plot is not None:
        from gristmill.cli.plot import require

        require()  # before the work, not after it
    if any(n < 1 for n in seq_lens):
        raise DatasetError(f"--seq-len takes positive numbers of tokens, got {list(seq_lens)}")
    check_policy(overlong)
    shown, root = opened(directory, remote)
    manifest = read_manifest(root)
    splits = manifest["splits"]
    chosen = split or ("train" if "train" in splits else next(iter(splits)))
    if chosen not in splits:
        raise DatasetError(
            f"{shown}: no split {chosen!r}; it has {', '.join(in_order(splits))}"
            + how_to_make(chosen)
        )
    datasets = {
        name: _open_split(directory, shown, name, remote or DatasetOptions(), manifest)
        for name in in_order(splits)
    }
    report = _build_report(shown, datasets, manifest, chosen, decode, seq_lens, overlong)
    if plot is not None:
        from gristmill.cli.plot import plot_report

        drawn = plot_report(report, chosen, plot)
        log.info(f"{drawn}: drew the [{chosen}] length histogram and packing efficiency")
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    _print_report(report)
    return 0


def opened(directory: str | os.PathLike[str], remote: DatasetOptions | None) -> tuple[str, Path]:
    """What ``directory`` is called in messages (a URL without its credentials) and the local
    folder that holds the dataset: the directory, or the mirror of a URL (opened here, its
    manifest fetched afresh). A local directory refuses the options of ``remote``."""
    source, mirror = where(directory, remote or DatasetOptions())
    if mirror is None:
        return str(directory), Path(source)
    return mirror.url, mirror.root


def _open_split(
    directory: str | os.PathLike[str],
    shown: str,
    split: str,
    remote: DatasetOptions,
    manifest: dict[str, Any],
) -> Dataset:
    """Split ``split`` of the dataset at ``directory``, refused unless it is the one
    ``manifest`` describes (prepared or uploaded again meanwhile: the report would mix two)."""
    dataset = Dataset(directory, replace(remote, split=split))
    if dataset.manifest != manifest:
        raise DatasetError(
            "the dataset was prepared again while it was being inspected; inspect it again",
            where=shown,
        )
    return dataset


def _build_report(
    label: str,
    datasets: dict[str, Dataset],
    manifest: dict[str, Any],
    chosen: str,
    decode: int,
    seq_lens: Sequence[int],
    overlong: str,
) -> dict[str, Any]:
    """What ``inspect`` of the dataset ``label`` reports: the manifest's summary, every split's
    counts, length histogram and packing table, and the first ``decode`` documents of split
    ``chosen``, decoded."""
    splits = {
        name: {
            "documents": entry["num_documents"],
            "tokens": entry["num_tokens"],
            "loss_tokens": entry["num_loss_tokens"],
            "shards": len(entry["shards"]),
            "length": entry["length_stats"],
            "histogram": length_histogram(datasets[name].document_lengths()),
            "packing": packing_table(datasets[name], seq_lens, overlong),
        }
        for name, entry in ((name, manifest["splits"][name]) for name in in_order(datasets))
    }
    shown = datasets[chosen]
    samples = [
        {
            "split": chosen,
            "document": index,
            "tokens": len(shown.documents.document(index)[0]),
            "text": decode_with_mask(shown, index),
        }
        for index in range(min(decode, shown.documents.num_documents))
    ]
    return {
        "path": label,
        "format_version": manifest["format_version"],
        "gristmill_version": manifest["gristmill_version"],
        "fingerprint": manifest["fingerprint"],
        "tokenizer": {k: manifest["tokenizer"][k] for k in ("spec", "vocab_size", "eos_id")},
        "dtype": manifest["dtype"],
        "sources": manifest["provenance"]["sources"],
        "splits": splits,
        "metadata_columns": {
            key: {k: v for k, v in column.items() if k in ("type", "distinct")}
            for key, column in manifest.get("metadata", {}).items()
        },
        "metadata": manifest.get("stats", {}).get("metadata", {}),
        "skipped": manifest["provenance"].get("skipped", {}),
        "samples": samples,
    }


def _print_report(report: dict[str, Any]) -> None:
    tok = report["tokenizer"]
    print(
        f"{report['path']}  (gristmill dataset v{report['format_version']}, "
        f"fingerprint {report['fingerprint'][:12]})"
    )
    print(f"tokenizer {tok['spec']}: vocabulary {tok['vocab_size']:,}, stored as {report['dtype']}")
    for source in report["sources"]:
        # The split kept from the source itself (keep_source_splits), where it has one.
        split = f" [{source['split']}]" if "split" in source else ""
        print(f"source {source['spec']}{split}: {source.get('records', 0):,} records")
    for name, entry in report["splits"].items():
        _print_split(name, entry)
    if report["skipped"]:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in report["skipped"].items())
        print(f"\nskipped while preparing: {reasons}")
    if report["metadata_columns"]:
        columns = ", ".join(
            f"{key} ({c['type']}" + (f", {c['distinct']:,} distinct)" if "distinct" in c else ")")
            for key, c in report["metadata_columns"].items()
        )
        print(f"\nmetadata columns per document: {columns}")
    for key, values in report["metadata"].items():
        top = sorted(values.items(), key=lambda kv: -kv[1]["documents"])[:8]
        shown = ", ".join(f"{v} ({c['documents']:,} docs, {c['tokens']:,} tokens)" for v, c in top)
        more = f", … {len(values) - len(top)} more" if len(values) > len(top) else ""
        print(f"metadata {key}: {shown}{more}")
    if report["samples"]:
        print(f"\ndecoded documents ({NO_LOSS_OPEN}…{NO_LOSS_CLOSE} = no loss):")
    for sample in report["samples"]:
        text = sample["text"]
        cut = (
            f"\n… ({len(text) - DECODE_CHARS:,} more characters)"
            if len(text) > DECODE_CHARS
            else ""
        )
        print(
            f"\n── {sample['split']} document {sample['document']} ({sample['tokens']:,} tokens) ──"
        )
        print(text[:DECODE_CHARS] + cut)


def _print_split(name: str, s: dict[str, Any]) -> None:
    """One split of the report: counts, length statistics, histogram bars, packing rows."""
    share = s["loss_tokens"] / s["tokens"] if s["tokens"] else 0.0
    length = s["length"]
    print(
        f"\n[{name}] {s['documents']:,} documents, {s['tokens']:,} tokens "
        f"({share:.1%} with loss), {s['shards']} shard(s)"
    )
    print(
        f"  document length: min {length['min']:,}, median {length['p50']:,.0f}, "
        f"mean {length['mean']:,.1f}, p90 {length['p90']:,.0f}, p99 {length['p99']:,.0f}, "
        f"max {length['max']:,}"
    )
    peak = max((b["documents"] for b in s["histogram"]), default=0)
    spans = [f"{b['min']:,}–{b['max']:,}" for b in s["histogram"]]
    width = max(map(len, spans), default=0)
    for span, bucket in zip(spans, s["histogram"]):
        bar = "█" * max(1, round(BAR_WIDTH * bucket["documents"] / peak))
        print(f"  {span:>{width}} tokens │{bar} {bucket['documents']:,}")
    for row in s["packing"]:
        left_out = (
            f"{row['tokens_left_out']:,} tokens left out"
            + (f", {row['dropped_documents']:,} documents" if row["dropped_documents"] else "")
            + f" (overlong={row['overlong']})"
            if row["tokens_left_out"]
            else "nothing left out"
        )
        empty = row["samples_without_loss"]
        print(
            f"  packing {row['packer']} @ {row['seq_len']:,}: {row['samples']:,} samples, "
            f"{row['efficiency']:.1%} full; {row['overlong_documents']:,} documents longer, "
            f"{left_out}" + (f"; {empty:,} samples without loss" if empty else "")
        )


def list_plugins(*, show_all: bool = False, as_json: bool = False) -> int:
    manager = get_manager()
    manager.failures()  # validate every plugin's records before listing
    plugins = [p for p in manager.plugins.values() if show_all or p.status != "blocked"]
    conflicts = manager.conflict_messages()
    described: dict[str, dict[str, Any]] = {}
    if show_all:
        for record_type in RECORD_TYPES:
            kind = record_type.plural
            for name, record in manager.components(record_type).items():
                entry = {
                    "description": record.description,
                    "requires": record.requires,
                    "options": dict(record.options),
                }
                described.setdefault(kind, {})[name] = entry
    if as_json:
        out: dict[str, Any] = {"plugins": [p.as_dict() for p in plugins], "conflicts": conflicts}
        if show_all:
            out["components"] = described
        print(json.dumps(out, indent=2))
    else:
        for p in plugins:
            print(f"{p.name:<24} {(p.dist or '-') + ' ' + (p.version or ''):<24} {p.status}")
            if p.error:
                print(f"    {p.error}")
            for kind, names in p.components.items():
                label = KINDS[kind][1].kind + "s"
                if not show_all:
                    print(f"    {label}: {', '.join(names)}")
                    continue
                for name in names:
                    info = described[kind][name]
                    needs = f" [requires {info['requires']}]" if info["requires"] else ""
                    print(f"    {KINDS[kind][1].kind} {name}: {info['description']}{needs}")
                    for option, text in info["options"].items():
                        print(f"        option {option}: {text}")
        for message in conflicts:
            print(f"conflict: {message}")
    failed = any(p.status == "error" for p in plugins)
    return 1 if failed or conflicts else 0


def list_presets(*, as_json: bool = False) -> int:
    presets = get_manager().components(PresetType)
    rows = [
        {
            "name": name,
            "source": p.source,
            "text_field": p.text_field,
            "tokenizer": p.tokenizer,
            "streaming": p.streaming,
            "description": p.description,
        }
        for name, p in sorted(presets.items())
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        mode = "streamed" if row["streaming"] else "downloaded"
        print(
            f"{row['name']:<18} {row['source']}  ({mode}, text field {row['text_field']!r}, "
            f"tokenizer {row['tokenizer']})"
        )
        print(f"{'':<18} {row['description']}")
    return 0


def verify_dataset(
    directory: str,
    *,
    as_json: bool = False,
    progress: bool | None = None,
    remote: DatasetOptions | None = None,
) -> int:
    """``gristmill verify``: 0 when the dataset is whole, 1 when a problem was found. A URL is
    fetched whole into its mirror first (:func:`gristmill.store.verify.fetch_every_file`)."""
    from gristmill.store.verify import fetch_every_file, verify

    shown, root = opened(directory, remote)
    found = []
    mirror = mirror_of(root)
    if mirror is not None:
        with _bar("fetch", _listed_bytes(root), progress) as bar:
            found = fetch_every_file(mirror, progress=bar.update)
    total = sum(
        f["bytes"]
        for split in _manifest_or_empty(root).get("splits", {}).values()
        for shard in split.get("shards", [])
        for f in shard.values()
        if isinstance(f, dict) and "bytes" in f
    )
    with _bar("verify", total, progress) as bar:
        checked = verify(root, progress=bar.update)
    # A file that could not be fetched is reported once, as the server's problem.
    unfetched = {problem.where for problem in found}
    problems = found + [p for p in checked if p.where not in unfetched]
    if as_json:
        print(
            json.dumps(
                {
                    "directory": shown,
                    "ok": not problems,
                    "bytes_checked": total,
                    "problems": [p._asdict() for p in problems],
                },
                indent=2,
            )
        )
    elif problems:
        for problem in problems:
            print(f"{problem.where}: {problem.message}")
        print(f"{shown}: {len(problems)} problem(s)")
    else:
        print(f"{shown}: OK ({total:,} bytes checked)")
    return 1 if problems else 0


def _bar(desc: str, total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    disable = None if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=disable)


def _listed_bytes(root: Path) -> int:
    """The bytes of every file the manifest at ``root`` lists."""
    return sum(entry["bytes"] for entry in listing((root / MANIFEST).read_bytes()).values())


def _manifest_or_empty(directory: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return read_manifest(directory)
    except DatasetError:
        return {}  # verify reports why
