"""``stream``: sources → examples → token documents → packed samples, with nothing written.

For data too large or too fresh to prepare first. It runs the chain ``prepare`` and
``open_dataset`` run: the same field mappers, tokenizers, loss masks and sample contract, and
the packers' online form, so streaming some sources gives the same samples as preparing them
(without ``dedup`` or a validation split) and opening the result with the same packer, as long
as they fit in one piece.

A stream is cut by its input's size alone (never by the number of ranks or workers) into
**chunks** of about ``chunk_bytes`` (runs of the sources' parts, planned as prepare's tasks are:
see :mod:`gristmill.ingest.plan`), read and tokenized as one unit of work, and **pieces** of
consecutive chunks, each packed on its own: the packer starts empty at a piece's start and is
flushed at its end. So a piece's samples depend on that piece alone, which lets ranks share
pieces out, workers tokenize chunks, and a loader resume at (piece, samples served) exactly; see
:mod:`gristmill.torch.streaming`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from gristmill.errors import DataError, GristmillError
from gristmill.ingest.chain import Problem, check_schemas, document_batches
from gristmill.ingest.mapping import check_fields
from gristmill.ingest.plan import Chunk, plan_chunks, source_size
from gristmill.ingest.policy import ErrorPolicy, describe_passed, describe_skips
from gristmill.ingest.records import source_inputs
from gristmill.ingest.sources import open_sources, presets_tokenizer, with_preset_defaults
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.options import StreamOptions, takes
from gristmill.plugin.components import (
    FieldMapperType,
    PackerType,
    PacksOnline,
    Segment,
)
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.serve.samples import Part, build_sample

if TYPE_CHECKING:
    from gristmill.ingest.records import Sources

log = logging.getLogger("gristmill")

MIN_PIECES = 64  # smaller input is cut into this many pieces, down to one chunk each, to balance


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
    # Units sources left out on purpose (blank lines…), per reason.
    passed_over: dict[str, int] = field(default_factory=dict)

    def skip(self, counts: Mapping[str, int], passed: Mapping[str, int] | None = None) -> None:
        for reason, n in counts.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        for reason, n in (passed or {}).items():
            self.passed_over[reason] = self.passed_over.get(reason, 0) + n

    @property
    def efficiency(self) -> float | None:
        """Tokens served / (samples × seq_len); ``None`` without a ``seq_len``."""
        if not self.seq_len or not self.samples:
            return None
        return self.served / (self.samples * self.seq_len)


class Document(tuple):
    """A streamed document, ``(ids, mask)`` as a :data:`~gristmill.serve.samples.Part`, with
    its metadata pairs beside (``metadata``), for a stream asked for ``segment_metadata``: the
    packer hands it back in its samples' segments."""

    metadata: tuple[tuple[str, Any], ...] | None

    def __new__(cls, ids: np.ndarray, mask: np.ndarray | None, metadata: Any) -> Document:
        document = super().__new__(cls, (ids, mask))
        document.metadata = metadata
        return document

    def __reduce__(self) -> tuple[Any, ...]:
        return Document, (*self, self.metadata)


@dataclass
class TokenizedChunk:
    """One chunk of a stream, tokenized: its documents and the records it skipped."""

    documents: list[Part]
    skipped: dict[str, int]
    passed_over: dict[str, int] = field(default_factory=dict)


class Stream:
    """Packed samples of some sources, tokenized as they are read (see :func:`stream`).

    Each ``iter()`` reads the sources again from the start, piece by piece; ``stats`` describes
    the pass under way, or the last one.
    """

    def __init__(
        self,
        sources: Sources,
        options: StreamOptions | None = None,
        *,
        manager: PluginManager | None = None,
    ):
        self.manager = manager or get_manager()
        specs = source_inputs(sources)
        given = options or StreamOptions()
        options = with_preset_defaults(given, specs, self.manager)
        self.options, self.seq_len, self.labels = options, options.seq_len, options.labels
        if options.format != "auto":
            check_fields(self.manager.get(FieldMapperType, options.format), options.fields)
        # Everything is resolved before the first record is read, so a typo fails at once.
        self.sources = open_sources(
            specs,
            self.manager,
            options.source_options,
            max_record_bytes=options.max_record_bytes,
            column_names=options.column_names,
        )
        assert options.tokenizer is not None, "resolved by with_preset_defaults"
        tokenizer_type = resolve_tokenizer(options.tokenizer, self.manager)
        tokenizer_options = tokenizer_type.check_options(options.tokenizer_options)
        with presets_tokenizer(given.tokenizer, specs, self.manager):
            self.tokenizer = tokenizer_type.factory(
                options.tokenizer, engine=options.engine, **tokenizer_options
            )
        record = self.manager.get(PackerType, options.packer)
        self.packer = _online_packer(record, options, self.manager)
        self.restart = record.restart if options.restart is None else bool(options.restart)
        self.stats = StreamStats(options.seq_len)

    def __getstate__(self) -> dict[str, Any]:
        # Workers started by spawn or forkserver receive the stream pickled: everything but the
        # plugin manager (modules do not pickle), which the other process finds again.
        return {k: v for k, v in vars(self).items() if k != "manager"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, manager=get_manager())

    @cached_property
    def pieces(self) -> list[tuple[Chunk, ...]]:
        """The stream's pieces, in order, each a run of chunks (planned once, by size alone)."""
        chunk_bytes, piece_bytes = self.options.chunk_bytes, self.options.piece_bytes
        chunks = plan_chunks(enumerate(self.sources), chunk_bytes, unread=self._refused)
        per_piece = max(1, min(piece_bytes // chunk_bytes, len(chunks) // MIN_PIECES))
        return [tuple(chunks[i : i + per_piece]) for i in range(0, len(chunks), per_piece)]

    @cached_property
    def _refused(self) -> dict[int, Problem]:
        """The sources the schema check refuses, by position; under ``on_error="fail"`` the
        first raises, before any record is read."""
        return check_schemas(self.sources, self.options.on_error)

    @cached_property
    def identity(self) -> str:
        """A fingerprint of what the samples depend on: the sources (names and sizes; their
        content is not read), the cut into pieces, and every option that shapes documents or
        samples. A loader's state names it, so it cannot resume another stream."""
        described = {
            "sources": [(s.spec, source_size(s)) for s in self.sources],
            "pieces": [len(piece) for piece in self.pieces],
            **self.options.identity(),
        }
        text = json.dumps(described, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def read(self, chunk: Chunk) -> TokenizedChunk:
        """Read, map and tokenize one chunk (any process may: what it needs travels with it)."""
        policy = ErrorPolicy(self.options.on_error, None)
        documents: list[Part] = []
        for position, part in chunk.parts:
            refused = self._refused.get(position)
            batches = document_batches(
                part, self.tokenizer, self.options, self.manager, policy, log.info, refused
            )
            for ids, masks, metadata, _ in batches:
                if self.options.segment_metadata:
                    documents += map(Document, ids, masks, metadata)
                else:
                    documents += zip(ids, masks)
        return TokenizedChunk(documents, policy.close(), policy.passed_over())

    def pack(
        self, chunks: Iterable[TokenizedChunk], stats: StreamStats
    ) -> Iterator[dict[str, np.ndarray]]:
        """The samples of one piece, given its chunks in order (the packer starts empty and is
        flushed at the end); counts what it reads and serves into ``stats``."""
        online = self.packer.online(self.seq_len)
        dropped = stats.dropped
        for chunk in chunks:
            stats.skip(chunk.skipped, chunk.passed_over)
            if not chunk.documents:
                continue
            lengths = np.fromiter((len(ids) for ids, _ in chunk.documents), np.int64)
            stats.documents += len(lengths)
            stats.tokens += int(lengths.sum())
            closed = online.push(chunk.documents, lengths)
            stats.dropped = dropped + online.dropped
            yield from self._samples(closed, stats)
        yield from self._samples(online.flush(), stats)
        stats.dropped = dropped + online.dropped

    def samples(self, pieces: Iterable[int], stats: StreamStats) -> Iterator[dict[str, np.ndarray]]:
        """The samples of these pieces, in the order given, read in this process."""
        for piece in pieces:
            yield from self.pack(map(self.read, self.pieces[piece]), stats)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        _refuse_parallel_copies()
        stats = self.stats = StreamStats(self.seq_len)
        yield from self.samples(range(len(self.pieces)), stats)
        if stats.skipped:
            log.warning(f"stream: {describe_skips(stats.skipped)}")
        if stats.passed_over:
            log.info(f"stream: {describe_passed(stats.passed_over)}")
        efficiency = "" if stats.efficiency is None else f", {stats.efficiency:.1%} full"
        log.info(
            f"stream: {stats.samples:,} samples from {stats.documents:,} documents"
            f"{efficiency}, {stats.dropped:,} dropped"
        )

    def _samples(
        self, closed: list[list[Segment]], stats: StreamStats
    ) -> Iterator[dict[str, np.ndarray]]:
        for segments in closed:
            parts = [
                (ids[start : start + size], None if mask is None else mask[start : start + size])
                for (ids, mask), start, size in segments
            ]
            stats.samples += 1
            stats.served += sum(size for _, _, size in segments)
            sample: dict[str, Any] = build_sample(parts, restart=self.restart, labels=self.labels)
            if self.options.segment_metadata:
                sample["metadata"] = _segment_metadata(segments, self.options.segment_metadata)
            yield sample


def _segment_metadata(segments: list[Segment], keys: Sequence[str]) -> dict[str, list[Any]]:
    """Per key, the value of each segment's document (``None`` where it has none), as its
    record held it: a stream has no column to give values one type, as a dataset does."""
    pairs = [dict(document.metadata or ()) for document, _, _ in segments]
    return {key: [found.get(key) for found in pairs] for key in keys}


def _online_packer(record: PackerType, options: StreamOptions, manager: PluginManager) -> Any:
    """The stream's packer, refused unless it packs online (it would need every length first)."""
    made = record.factory(overlong=options.overlong, **record.check_options(options.packer_options))
    if not isinstance(made, PacksOnline):
        online = ", ".join(
            name
            for name, r in sorted(manager.components(PackerType).items())
            if isinstance(r.factory, type) and issubclass(r.factory, PacksOnline)
        )
        raise DataError(
            f"the {options.packer} packer needs every document's length before it packs, so it "
            f"cannot pack a stream; prepare the data first, or stream with {online}"
        )
    made.online(options.seq_len)  # refuses a missing seq_len now
    return made


def _refuse_parallel_copies() -> None:
    """Iterating a stream reads every piece: copies of it in several DataLoader workers or ranks
    would each serve the whole data. Point to the forms that share the pieces out instead."""
    torch = sys.modules.get("torch")
    if torch is None:
        return  # no DataLoader and no process group without torch
    info = torch.utils.data.get_worker_info()
    if info is not None and info.num_workers > 1:
        raise GristmillError(
            f"a stream read by {info.num_workers} DataLoader workers would serve every sample "
            "once per worker: use gristmill.torch.dataloader(stream, ...), or wrap it in "
            "gristmill.torch.StreamDataset, which share the pieces out"
        )
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise GristmillError(
            f"a stream read on {dist.get_world_size()} ranks would serve every sample once per "
            "rank: use gristmill.torch.dataloader(stream, ...), which shares the pieces out and "
            "gives every rank the same number of steps"
        )


@takes(StreamOptions)
def stream(
    sources: Sources,
    options: StreamOptions,
    *,
    manager: PluginManager | None = None,
) -> Stream:
    """Packed training samples of ``sources``, tokenized on the fly; nothing is written.

    An iterable of the samples :func:`~gristmill.open_dataset` serves (``input_ids``,
    ``labels``, ``position_ids``, ``seq_lens``). ``packer``: ``greedy-stream`` (best fit into a
    bounded buffer of open samples, ``packer_options={"buffer_size": N}``), ``window`` (best
    fit among the next documents, in corpus order; ``window_N``), ``concat-chunk`` (the token
    stream in ``seq_len`` windows) or ``none`` (one document per sample); packers
    that need every length first (``first-fit``) are refused. Other options are those of
    :func:`~gristmill.prepare` that shape documents (``format``, ``fields``,
    ``train_on_prompt``, ``normalize``, ``max_doc_tokens``, ``on_error``: skipped records are
    counted in ``stats.skipped``, ``max_record_bytes``, ``column_names``, ``engine``,
    ``tokenizer_options``, ``source_options``) and of
    :func:`~gristmill.open_dataset` that shape samples (``packer_options``, ``overlong``,
    ``restart``, ``labels``). ``stats`` reports documents, samples and packing efficiency.
    ``metadata_columns`` and ``segment_metadata=[KEY, ...]`` put each segment's document's
    metadata in its sample (``sample["metadata"]``: per key, one value per segment, as the
    record held it).

    The input is cut into pieces of about ``piece_bytes`` (default 32 MiB; smaller input into
    up to 64 pieces) made of chunks of about ``chunk_bytes`` (1 MiB); each piece is packed on
    its own. Iterating the stream reads every piece in order in this process; for several
    ranks and DataLoader workers, with equal steps and exact resumption, pass it to
    :func:`gristmill.torch.dataloader` (or wrap it in :class:`gristmill.torch.StreamDataset`).
    Copies of it iterated in several workers or ranks are refused (each would serve everything).

    ``sources`` are what :func:`~gristmill.prepare` takes: specs, or records in memory (a list of
    dicts, a ``pyarrow.Table``, a ``datasets.Dataset`` or ``IterableDataset``; any other iterable
    of dicts is read once, so the stream serves one pass).
    """
    return Stream(sources, options, manager=manager)
