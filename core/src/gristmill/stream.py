"""``stream``: sources → examples → token documents → packed samples, with nothing written.

For data too large or too fresh to prepare first. It runs the chain ``prepare`` and
``open_dataset`` run: the same field mappers, tokenizers, loss masks and sample contract, and
the packers' online form, so streaming some sources gives the same samples as preparing them
(without ``dedup`` or a validation split) and opening the result with the same packer.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gristmill.components import DEFAULT_MAX_RECORD_BYTES, Segment
from gristmill.encoding import encoded_batches
from gristmill.errors import DataError, GristmillError
from gristmill.mapping import check_fields, mapped_examples
from gristmill.overlong import check_policy
from gristmill.plugins import PluginManager, get_manager
from gristmill.policy import ErrorPolicy
from gristmill.samples import build_sample, check_labels
from gristmill.sources import open_sources
from gristmill.tokenizers import resolve_tokenizer

log = logging.getLogger("gristmill")


@dataclass
class StreamStats:
    """What one pass over a stream has read and served so far."""

    seq_len: int | None
    documents: int = 0  # tokenized documents read
    tokens: int = 0  # their tokens
    samples: int = 0
    served: int = 0  # tokens in the samples
    dropped: int = 0  # documents left out by overlong="drop"
    skipped: dict[str, int] = field(default_factory=dict)  # records skipped, per reason

    @property
    def efficiency(self) -> float | None:
        """Tokens served / (samples × seq_len); ``None`` without a ``seq_len``."""
        if not self.seq_len or not self.samples:
            return None
        return self.served / (self.samples * self.seq_len)


class Stream:
    """Packed samples of some sources, tokenized as they are read (see :func:`stream`).

    Each ``iter()`` reads the sources again from the start; ``stats`` describes the pass under
    way, or the last one.
    """

    def __init__(
        self,
        sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        tokenizer: str = "byte",
        seq_len: int | None = None,
        packer: str = "greedy-stream",
        packer_options: Mapping[str, Any] | None = None,
        overlong: str = "truncate",
        restart: bool | None = None,
        labels: str = "unshifted",
        format: str = "auto",
        fields: Mapping[str, str] | None = None,
        train_on_prompt: bool = False,
        normalize: bool = True,
        max_doc_tokens: int | None = None,
        on_error: str = "fail",
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        column_names: Sequence[str] | None = None,
        engine: str = "auto",
        manager: PluginManager | None = None,
    ):
        self.manager = manager or get_manager()
        specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
        if seq_len is not None and seq_len < 1:
            raise DataError(f"seq_len must be a positive number of tokens, got {seq_len}")
        self.seq_len = seq_len
        self.labels = check_labels(labels)
        self.format, self.fields = format, dict(fields or {})
        if format != "auto":
            check_fields(self.manager.field_mapper(format), self.fields)
        self.train_on_prompt, self.normalize = train_on_prompt, normalize
        self.max_doc_tokens, self.on_error = max_doc_tokens, on_error
        ErrorPolicy(on_error, None)  # refuses an unknown policy now, not at the first record
        # Everything is resolved before the first record is read, so a typo fails at once.
        self.sources = open_sources(
            specs,
            self.manager,
            max_record_bytes=int(max_record_bytes),
            column_names=list(column_names) if column_names else None,
        )
        self.tokenizer = resolve_tokenizer(tokenizer, self.manager).factory(
            tokenizer, engine=engine
        )
        record = self.manager.packer(packer)
        self.packer = record.factory(overlong=check_policy(overlong), **dict(packer_options or {}))
        if not hasattr(self.packer, "online"):
            online = ", ".join(
                name
                for name, r in sorted(self.manager.components("packers").items())
                if hasattr(r.factory, "online")  # type: ignore[attr-defined]  # a packer class
            )
            raise DataError(
                f"the {packer} packer needs every document's length before it packs, so it "
                f"cannot pack a stream; prepare the data first, or stream with {online}"
            )
        self.packer.online(seq_len)  # refuses a missing seq_len now
        self.restart = record.restart if restart is None else bool(restart)
        self.stats = StreamStats(seq_len)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        _refuse_parallel_copies()
        stats = self.stats = StreamStats(self.seq_len)
        online = self.packer.online(self.seq_len)
        policy = ErrorPolicy(self.on_error, None)
        for source in self.sources:
            examples = mapped_examples(
                source, self.format, self.fields, self.manager, policy, report=log.info
            )
            batches = encoded_batches(
                examples,
                self.tokenizer,
                policy,
                normalize=self.normalize,
                train_on_prompt=self.train_on_prompt,
                max_doc_tokens=self.max_doc_tokens,
            )
            for ids, masks, _, _ in batches:
                lengths = np.fromiter(map(len, ids), np.int64, len(ids))
                stats.documents += len(ids)
                stats.tokens += int(lengths.sum())
                closed = online.push(list(zip(ids, masks)), lengths)
                stats.dropped, stats.skipped = online.dropped, dict(policy.counts)
                yield from self._samples(closed)
        yield from self._samples(online.flush())
        stats.skipped = policy.close()
        if stats.skipped:
            log.warning(f"stream: {policy.summary()}")
        efficiency = "" if stats.efficiency is None else f", {stats.efficiency:.1%} full"
        log.info(
            f"stream: {stats.samples:,} samples from {stats.documents:,} documents"
            f"{efficiency}, {stats.dropped:,} dropped"
        )

    def _samples(self, closed: list[list[Segment]]) -> Iterator[dict[str, np.ndarray]]:
        for segments in closed:
            parts = [
                (ids[start : start + size], None if mask is None else mask[start : start + size])
                for (ids, mask), start, size in segments
            ]
            self.stats.samples += 1
            self.stats.served += sum(size for _, _, size in segments)
            yield build_sample(parts, restart=self.restart, labels=self.labels)


def _refuse_parallel_copies() -> None:
    """Every copy of a stream reads every source: in several DataLoader workers or ranks each
    would serve the whole data. Until the stream shards itself, say so instead."""
    torch = sys.modules.get("torch")
    if torch is None:
        return  # no DataLoader and no process group without torch
    info = torch.utils.data.get_worker_info()
    if info is not None and info.num_workers > 1:
        raise GristmillError(
            f"a stream read by {info.num_workers} DataLoader workers would serve every sample "
            "once per worker: use num_workers=0 or 1"
        )
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise GristmillError(
            f"a stream read on {dist.get_world_size()} ranks would serve every sample once per "
            "rank: prepare the data and use open_dataset with a distributed sampler"
        )


def stream(
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    tokenizer: str = "byte",
    seq_len: int | None = None,
    packer: str = "greedy-stream",
    **options: Any,
) -> Stream:
    """Packed training samples of ``sources``, tokenized on the fly; nothing is written.

    An iterable of the samples :func:`~gristmill.open_dataset` serves (``input_ids``,
    ``labels``, ``position_ids``, ``seq_lens``). ``packer``: ``greedy-stream`` (best fit into a
    bounded buffer of open samples, ``packer_options={"buffer_size": N}``), ``concat-chunk``
    (the token stream in ``seq_len`` windows) or ``none`` (one document per sample); packers
    that need every length first (``first-fit``) are refused. Other options are those of
    :func:`~gristmill.prepare` that shape documents (``format``, ``fields``,
    ``train_on_prompt``, ``normalize``, ``max_doc_tokens``, ``on_error``: skipped records are
    counted in ``stats.skipped``, ``max_record_bytes``, ``column_names``, ``engine``) and of
    :func:`~gristmill.open_dataset` that shape samples (``packer_options``, ``overlong``,
    ``restart``, ``labels``). ``stats`` reports documents, samples and packing efficiency.

    A stream reads every source in one process, in order; several DataLoader workers or ranks
    reading copies of it are refused (each would serve everything).
    """
    return Stream(sources, tokenizer=tokenizer, seq_len=seq_len, packer=packer, **options)
