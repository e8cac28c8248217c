"""``prepare``: sources → examples → token documents → shards on disk, with a manifest written last."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from gristmill._version import __version__
from gristmill.components import DEFAULT_MAX_RECORD_BYTES, Rejected, ShardWriter, Tokenizer, Where
from gristmill.errors import DataError, DatasetError
from gristmill.examples import Example, loss_mask
from gristmill.manifest import (
    FORMAT,
    FORMAT_VERSION,
    INCOMPLETE,
    fingerprint,
    read_manifest,
    write_atomic,
    write_manifest,
)
from gristmill.mapping import SchemaCheck, check_fields, mapped_examples
from gristmill.plugins import PluginManager, get_manager
from gristmill.policy import POLICIES, ErrorPolicy, reject_file
from gristmill.sources import open_sources
from gristmill.tokenizers import TOKENIZER_DIR, resolve_tokenizer

log = logging.getLogger("gristmill")

BATCH = 512  # examples per tokenizer call: large enough for batch APIs, small enough to stream
DEFAULT_TOKENS_PER_SHARD = 1 << 26  # 64 Mi tokens: 128 MiB per shard at uint16


def prepare(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    tokenizer: str = "byte",
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD,
    shard_format: str = "memmap-shards",
    train_on_prompt: bool = False,
    normalize: bool = True,
    dedup: bool = False,
    on_error: str = "fail",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    column_names: Sequence[str] | None = None,
    max_doc_tokens: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    manager: PluginManager | None = None,
) -> dict[str, Any]:
    """Tokenize ``sources`` into a dataset directory ``out``; return its manifest.

    Running it again with the same sources and settings finds the dataset up to date and does
    nothing; different settings are refused unless ``overwrite``. ``progress=None`` shows a progress
    bar only on a terminal. ``on_error="fail"`` raises :class:`~gristmill.errors.DataError` naming
    the file, line and field of the first bad record; ``"skip"`` counts bad records per reason
    (``manifest["provenance"]["skipped"]``) and writes them to ``OUT.rejects.jsonl``.
    """
    manager = manager or get_manager()
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    # Plain Python numbers: numpy scalars would not serialise into the manifest.
    val_fraction, seed, tokens_per_shard = float(val_fraction), int(seed), int(tokens_per_shard)
    max_record_bytes = int(max_record_bytes)
    if on_error not in POLICIES:
        raise DataError(f"on_error must be one of {', '.join(POLICIES)}, got {on_error!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if tokens_per_shard < 1:
        raise DataError(f"tokens_per_shard must be positive, got {tokens_per_shard}")
    max_doc_tokens = None if max_doc_tokens is None else int(max_doc_tokens)
    if max_doc_tokens is not None and max_doc_tokens < 2:
        raise DataError(f"max_doc_tokens must be at least 2, got {max_doc_tokens}")
    fields = dict(fields or {})
    # Resolve every component before the output directory is touched.
    column_names = list(column_names) if column_names else None
    opened = open_sources(
        specs, manager, max_record_bytes=max_record_bytes, column_names=column_names
    )
    tokenizer_type = resolve_tokenizer(tokenizer, manager)
    fmt = manager.shard_format(shard_format)
    if format != "auto":
        check_fields(manager.field_mapper(format), fields)
    config = {
        "tokenizer": tokenizer,
        "format": format,
        "fields": fields,
        "val_fraction": val_fraction,
        "seed": seed,
        "tokens_per_shard": tokens_per_shard,
        "shard_format": shard_format,
        "train_on_prompt": train_on_prompt,
        "normalize": normalize,
        "dedup": dedup,
        "on_error": on_error,
        "max_record_bytes": max_record_bytes,
        "column_names": column_names,
        "max_doc_tokens": max_doc_tokens,
    }
    provenance = [{"spec": s.spec, "fingerprint": s.fingerprint()} for s in opened]
    tok = tokenizer_type.factory(tokenizer)
    # A tokenizer that can say when its files changed (hf:DIR re-trained in place) takes part.
    tok_fingerprint = getattr(tok, "fingerprint", None)
    config_fp = fingerprint(
        {
            "format_version": FORMAT_VERSION,
            "config": config,
            "sources": provenance,
            "tokenizer": tok_fingerprint() if tok_fingerprint else None,
        }
    )

    out_dir = Path(out)
    existing = _claim_output(out_dir, config_fp, overwrite)
    if existing is not None:
        log.info(f"{out_dir}: already prepared from these sources and settings; nothing to do")
        return existing

    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / INCOMPLETE, b"prepare is writing this dataset\n")
    (out_dir / TOKENIZER_DIR).mkdir(exist_ok=True)
    tok_config = tok.save(out_dir / TOKENIZER_DIR)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    # Every asked-for split exists in the output, even if the hash leaves it empty.
    writers: dict[str, ShardWriter] = {
        split: fmt.writer(out_dir, split, dtype=dtype, tokens_per_shard=tokens_per_shard)
        for split in (("train", "val") if val_fraction > 0 else ("train",))
    }
    lengths: dict[str, list[np.ndarray]] = {split: [] for split in writers}
    loss_tokens = dict.fromkeys(writers, 0)

    from tqdm.auto import tqdm

    bar = tqdm(desc="prepare", unit=" docs", disable=None if progress is None else not progress)
    index = duplicates = truncated = 0
    seen: set[bytes] = set()  # 16-byte digests of kept documents, with --dedup
    metadata = MetadataStats()
    policy = ErrorPolicy(on_error, reject_file(out_dir))
    try:
        with bar:
            schemas = SchemaCheck()
            for source_entry, source in zip(provenance, opened):
                count = 0
                if not schemas.admit(source, policy):
                    source_entry["records"] = 0
                    continue
                examples = mapped_examples(source, format, fields, manager, policy, report=log.info)
                while batch := list(islice(examples, BATCH)):
                    if normalize:
                        batch = [(example.normalized(), where) for example, where in batch]
                    ids, masks, digests = [], [], []
                    encoded = _encode(tok, batch, train_on_prompt, max_doc_tokens)
                    for (example, _), result in zip(batch, encoded):
                        if isinstance(result, Rejected):
                            policy.reject(result)
                            continue
                        doc, mask, cut = result
                        truncated += cut
                        digest = _digest(doc, mask)
                        if dedup:
                            if digest in seen:
                                duplicates += 1
                                continue
                            seen.add(digest)
                        ids.append(doc)
                        masks.append(mask)
                        digests.append(digest)
                        if example.metadata:
                            metadata.add(example.metadata, len(doc))
                    splits = _assign_splits(digests, seed, val_fraction)
                    for split in ("train", "val"):
                        chosen = np.flatnonzero(splits == split)
                        if not len(chosen):
                            continue
                        docs = [ids[i] for i in chosen]
                        doc_masks = [masks[i] for i in chosen]
                        writers[split].add(docs, doc_masks)
                        lengths[split].append(np.fromiter(map(len, docs), np.int64, len(docs)))
                        loss_tokens[split] += sum(
                            len(d) if m is None else int(m.sum()) for d, m in zip(docs, doc_masks)
                        )
                    index += len(ids)
                    count += len(ids)
                    bar.update(len(batch))
                source_entry["records"] = count
    except BaseException:
        policy.abort()  # the dataset stays marked incomplete; no half reject file either
        raise
    skipped = policy.close()
    if skipped:
        log.warning(f"{out_dir}: {policy.summary()}")
    if dedup:
        log.info(f"{out_dir}: dropped {duplicates:,} exact duplicate document(s)")
    if truncated:
        log.info(f"{out_dir}: truncated {truncated:,} document(s) to {max_doc_tokens:,} tokens")
    if not index:
        raise DataError(f"the sources hold no usable records: {', '.join(map(str, specs))}")

    splits_entry = {}
    for split, writer in writers.items():
        shards = writer.close()
        doc_lengths = np.concatenate([np.zeros(0, np.int64), *lengths[split]])
        if not len(doc_lengths):
            log.warning(f"{out_dir}: the {split} split is empty")
        splits_entry[split] = {
            "num_documents": len(doc_lengths),
            "num_tokens": int(doc_lengths.sum()),
            "num_loss_tokens": loss_tokens[split],
            "length_stats": _length_stats(doc_lengths),
            "shards": shards,
        }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gristmill_version": __version__,
        "shard_format": {"name": fmt.name, "version": fmt.format_version},
        "config_fingerprint": config_fp,
        "fingerprint": fingerprint([config_fp, splits_entry]),
        "dtype": dtype.name,
        "tokenizer": {
            "name": tokenizer_type.name,
            "spec": tokenizer,
            "config": tok_config,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "add_bos": tok.add_bos,
            "add_eos": tok.add_eos,
            # How chat examples are rendered: the tokenizer's own template, or gristmill's.
            "chat_template": "built-in"
            if getattr(tok, "render_chat", None) is None
            else "tokenizer",
        },
        "splits": splits_entry,
        "stats": {"metadata": metadata.summary()},
        "provenance": {
            "sources": provenance,
            "config": config,
            "skipped": skipped,
            "duplicates": duplicates,
            "truncated": truncated,
        },
    }
    write_manifest(out_dir, manifest)
    (out_dir / INCOMPLETE).unlink()
    totals = ", ".join(
        f"{s}: {e['num_documents']:,} documents, {e['num_tokens']:,} tokens"
        for s, e in splits_entry.items()
    )
    log.info(f"{out_dir}: wrote {totals}")
    return manifest


class MetadataStats:
    """Documents and tokens per value of each metadata key (``{"metadata": {"lang": "en"}}``).

    At most ``MAX_VALUES`` distinct values are kept per key; the rest count as ``(other)``, so a
    per-record id in the metadata cannot grow the manifest without bound.
    """

    MAX_VALUES = 100

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, list[int]]] = {}

    def add(self, metadata: tuple[tuple[str, object], ...], tokens: int) -> None:
        for key, value in metadata:
            values = self.counts.setdefault(key, {})
            label = json.dumps(value) if not isinstance(value, str) else value
            if label not in values and len(values) >= self.MAX_VALUES:
                label = "(other)"
            entry = values.setdefault(label, [0, 0])
            entry[0] += 1
            entry[1] += tokens

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            key: {v: {"documents": d, "tokens": t} for v, (d, t) in sorted(values.items())}
            for key, values in sorted(self.counts.items())
        }


def _claim_output(out_dir: Path, config_fp: str, overwrite: bool) -> dict[str, Any] | None:
    """Make ``out_dir`` ready to write; return its manifest instead if it is already up to date."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DatasetError(f"{out_dir} exists and is not a directory; choose another -o")
    ours = (out_dir / INCOMPLETE).exists() or _is_dataset(out_dir)
    if not ours:
        if any(out_dir.iterdir()):
            raise DatasetError(
                f"{out_dir} is not empty and is not a gristmill dataset; choose a new or empty -o"
            )
        return None
    if (out_dir / INCOMPLETE).exists():
        log.info(
            f"{out_dir}: an earlier prepare did not finish (interrupted or failed); starting again"
        )
    elif not overwrite:
        manifest = read_manifest(out_dir)
        if manifest.get("config_fingerprint") == config_fp:
            return manifest
        raise DatasetError(
            f"{out_dir} already holds a dataset prepared from other sources or settings; "
            "pass --overwrite to replace it, or choose another -o"
        )
    shutil.rmtree(out_dir)
    return None


def _is_dataset(directory: Path) -> bool:
    try:
        read_manifest(directory)
    except DatasetError:
        return False
    return True


Encoded = tuple[np.ndarray, np.ndarray | None, bool]  # ids, loss mask (None: all), truncated


def _encode(
    tok: Tokenizer,
    batch: list[tuple[Example, Where]],
    train_on_prompt: bool,
    max_doc_tokens: int | None = None,
) -> list[Encoded | Rejected]:
    """Per example: token ids, loss mask and whether it was truncated; or why not."""
    rendered = [_render(tok, example, where, train_on_prompt) for example, where in batch]
    valid = [r for r in rendered if not isinstance(r, Rejected)]
    encoded = iter(_encode_rendered(tok, valid, max_doc_tokens))
    return [r if isinstance(r, Rejected) else next(encoded) for r in rendered]


Rendered = tuple[str, tuple[tuple[int, int], ...], Where]  # text, loss spans, origin


def _render(
    tok: Tokenizer, example: Example, where: Where, train_on_prompt: bool
) -> Rendered | Rejected:
    """The text to tokenize and its loss spans: chat through the tokenizer's own template when
    it has one (``render_chat``), else the built-in templates of :meth:`Example.render`."""
    render_chat = getattr(tok, "render_chat", None)
    if example.messages is None or render_chat is None:
        return (*example.render(train_on_prompt=train_on_prompt), where)
    try:
        return (*render_chat(example.messages, train_on_prompt=train_on_prompt), where)
    except DataError as exc:  # a template that refuses this conversation or renders it unevenly
        return Rejected("chat-template", exc.reason, where, field=exc.field)


def _encode_rendered(
    tok: Tokenizer, items: list[Rendered], max_doc_tokens: int | None
) -> list[Encoded | Rejected]:
    if not items:
        return []
    texts = [text for text, _, _ in items]
    full = [spans == ((0, len(text)),) for text, spans, _ in items]
    try:
        ids, offsets = tok.encode_batch(texts, offsets=not all(full))
    except (UnicodeError, ValueError) as exc:
        if len(items) > 1:  # find the culprit(s): encode one by one
            return [out for item in items for out in _encode_rendered(tok, [item], max_doc_tokens)]
        return [
            Rejected(
                "untokenizable",
                f"cannot tokenize ({exc}); the text holds characters that are not valid "
                "Unicode, such as a lone surrogate from a JSON \\ud800 escape: fix or remove "
                "the record",
                items[0][2],
                texts[0].encode("utf-8", "replace").decode(),
            )
        ]
    out: list[Encoded | Rejected] = []
    for i, doc in enumerate(ids):
        text, spans, where = items[i]
        if len(doc) and (int(doc.min()) < 0 or int(doc.max()) >= tok.vocab_size):
            message = f"the tokenizer returned ids outside its vocabulary [0, {tok.vocab_size})"
            out.append(Rejected("bad-token-ids", message, where))
            continue
        mask = None
        if not full[i]:
            assert offsets is not None
            mask = loss_mask(offsets[i], spans)
            if not mask.any():
                message = "no token carries loss (the completion is empty after tokenizing)"
                out.append(Rejected("no-loss", message, where, text))
                continue
        doc, mask = _add_specials(tok, doc, mask)
        if not len(doc):
            out.append(Rejected("no-tokens", "the text tokenizes to no tokens", where, text))
            continue
        cut = max_doc_tokens is not None and len(doc) > max_doc_tokens
        if cut:
            doc, mask = _truncate(tok, doc, mask, max_doc_tokens)  # type: ignore[arg-type]
            if mask is not None and not mask.any():
                message = f"no token carries loss within the first {max_doc_tokens:,} tokens"
                out.append(Rejected("no-loss", message, where, text))
                continue
        out.append((doc, mask, cut))
    return out


def _truncate(
    tok: Tokenizer, doc: np.ndarray, mask: np.ndarray | None, limit: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``limit`` tokens; a final EOS stays the last token, so documents still end.

    The kept EOS carries loss only if the last kept token does: stopping is not learned from a
    prompt cut in the middle.
    """
    keep = limit - 1 if tok.eos_id is not None and doc[-1] == tok.eos_id else limit
    doc = np.concatenate([doc[:keep], doc[len(doc) - (limit - keep) :]])
    if mask is not None:
        mask = np.concatenate([mask[:keep], mask[keep - 1 : keep][: limit - keep]])
    return doc, mask


def _add_specials(
    tok: Tokenizer, doc: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    # BOS never carries loss (nothing predicts it); EOS does whenever the text's end does, so a
    # model learns to stop after a completion. A document whose text already yields them (a chat
    # template that writes the BOS, or closes each answer with the EOS) does not get a second.
    bos, eos = tok.bos_id, tok.eos_id
    add_bos = tok.add_bos and bos is not None and not (len(doc) and doc[0] == bos)
    add_eos = tok.add_eos and eos is not None and not (len(doc) and doc[-1] == eos)
    head = [bos] if add_bos else []
    tail = [eos] if add_eos else []
    if not head and not tail:
        return doc, mask
    doc = np.concatenate([np.asarray(head, doc.dtype), doc, np.asarray(tail, doc.dtype)])
    if mask is not None:
        end = mask[-1:] if len(mask) else np.ones(1, np.uint8)
        mask = np.concatenate([np.zeros(len(head), np.uint8), mask, end[: len(tail)]])
    return doc, mask


def _digest(ids: np.ndarray, mask: np.ndarray | None) -> bytes:
    """A document's identity: its tokens and loss mask (for --dedup and the split)."""
    digest = hashlib.blake2b(ids.tobytes(), digest_size=16)
    if mask is not None:
        digest.update(mask.tobytes())
    return digest.digest()


def _assign_splits(digests: list[bytes], seed: int, val_fraction: float) -> np.ndarray:
    """``"train"`` or ``"val"`` per document, from a seeded hash of its content.

    A document's split depends only on its content and the seed: stable under reordering and
    parallelism, and identical documents never straddle train and val.
    """
    if val_fraction <= 0:
        return np.full(len(digests), "train")
    key = (seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    hashes = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(d, digest_size=8, key=key).digest(), "little")
            for d in digests
        ),
        dtype=np.uint64,
        count=len(digests),
    )
    uniform = (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(uniform < val_fraction, "val", "train")


def _length_stats(lengths: np.ndarray) -> dict[str, float | int]:
    if not len(lengths):
        return dict.fromkeys(("min", "max", "mean", "p50", "p90", "p99"), 0)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }
