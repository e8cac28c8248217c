"""``open_dataset``: a prepared dataset served as packed training samples."""

from __future__ import annotations

import contextlib
import logging
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gristmill.errors import DatasetError, GristmillError
from gristmill.ingest.splits import in_order
from gristmill.layout import PLANS_DIR
from gristmill.options import DatasetOptions, takes
from gristmill.plugin.atomic import fingerprint, write_atomic
from gristmill.plugin.components import (
    PackerType,
    PackPlan,
    ReadsSpans,
    Sampler,
    SamplerType,
    ShardFormatType,
    ShardReader,
    Tokenizer,
)
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.plugin.packing import PLAN_ARRAYS, keep_samples, plan_problem
from gristmill.plugin.remote import Mirror, is_remote, local_path, open_mirror, redacted
from gristmill.serve.metadata import DocumentMetadata
from gristmill.serve.samples import (
    Buffers,
    SampleBatch,
    SampleList,
    Segments,
    build_samples,
    carry_no_loss,
    join_parts,
    runs_no_loss,
    shift_sample,
    unshifted_sample,
)
from gristmill.store.index import index_lengths, loss_entry, read_loss_runs
from gristmill.store.integrity import check_intact
from gristmill.store.manifest import check_generation, generation_changed, load_saved, read_manifest

log = logging.getLogger("gristmill")

MADE_BY = {  # a split prepare makes when asked, and what asks for it
    "val": "--val-fraction F (val_fraction=F)",
    "test": "--test-fraction F (test_fraction=F)",
}
VALIDATION = ("validation", "valid", "dev")  # what gristmill calls val


def how_to_make(split: str) -> str:
    """What to add to a "no split" error: how ``prepare`` makes that split, or its name."""
    if split in VALIDATION:
        return "; gristmill calls the validation split val"
    if split in MADE_BY:
        return (
            f"; prepare makes one with {MADE_BY[split]}, or keeps a source's own with "
            "--keep-source-splits"
        )
    return ""


class Dataset:
    """Map-style packed samples of one split: ``len(ds)`` and ``ds[i]``.

    ``ds[i]`` is a dict of int64 arrays: ``input_ids``; ``labels`` (the token id where it carries
    loss, else -100; the first token of every document is -100 too, so that no position learns to
    predict across a document boundary when the model shifts labels); ``position_ids`` restarting
    at 0 for every document; ``seq_lens`` (the length of each document segment in the sample).
    ``restart=False`` makes each sample one sequence instead (the default of ``concat-chunk``);
    see :func:`gristmill.serve.samples.build_samples`. ``ds.batch(indices)`` gives many samples at once,
    and a plain ``torch.utils.data.DataLoader(ds, batch_size=N)`` gets each batch's samples so
    (``__getitems__``); ``ds[i]`` builds its one sample straight into its arrays.

    ``labels="shifted"`` serves the pair a plain training loop wants instead: ``input_ids`` are
    the sample's tokens but the last, and ``labels[j]`` is the target of position ``j`` (the next
    token, or -100 where it carries no loss or starts another document); ``position_ids`` and
    ``seq_lens`` follow ``input_ids``. Pack with ``seq_len=N + 1`` for ``N``-token inputs.

    Documents prepared with metadata (a record's ``metadata`` object, ``metadata_columns``)
    keep it: ``ds.metadata(doc)`` is one document's, ``ds.metadata_values(key, docs)`` a
    column's stored values for many (strings as codes: ``ds.decode_metadata``,
    ``ds.metadata_code``), ``ds.documents_of(i)`` the documents of sample ``i``'s segments, and
    a batch's :meth:`~gristmill.serve.samples.SampleBatch.metadata_of` their metadata, aligned
    with the segments. ``segment_metadata=[KEY, ...]`` puts those keys' values in every sample
    dict too (``sample["metadata"]``: per key, a list of one value per segment).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: DatasetOptions | None = None,
        *,
        manager: PluginManager | None = None,
    ):
        self.options = options = options or DatasetOptions()
        # What was opened (a directory, or a URL whose files a local mirror holds), and the
        # dataset directory read: the directory itself, or the mirror's folder.
        self.source, self.mirror = where(path, options)
        self.path = Path(self.source) if self.mirror is None else self.mirror.root
        self.manager = manager or get_manager()
        if self.mirror is None:
            self._open(options)
            return
        try:
            self._open(options)
        except DatasetError as error:
            url = redacted(os.fspath(self.source))
            if url in str(error):  # the mirror's own, which names the URL
                raise
            raise DatasetError(
                f"{error} (read through its mirror in {self.path})", where=url
            ) from None

    def _open(self, options: DatasetOptions) -> None:
        self.manifest = read_manifest(self.path)
        splits = self.manifest["splits"]
        if options.split not in splits:
            raise DatasetError(
                f"{self.path}: no split {options.split!r}; this dataset has "
                f"{', '.join(in_order(splits))}{how_to_make(options.split)}"
            )
        self.split, self.seq_len, self.seed = options.split, options.seq_len, options.seed
        self.labels, self.overlong, self.no_loss = options.labels, options.overlong, options.no_loss
        fmt = self.manager.get(ShardFormatType, self.manifest["shard_format"]["name"])
        self.documents: ShardReader = fmt.reader(
            self.path, splits[self.split]["shards"], dtype=np.dtype(self.manifest["dtype"])
        )
        lengths = self.document_lengths()
        # The manifest file the reader found (and checks again at each shard's first read)
        # holds the generation read: no shard of another generation is served.
        check_generation(self.path, self.manifest)
        record = self.manager.get(PackerType, options.packer)
        self.packer = record.name  # as registered: first_fit and first-fit share a cached plan
        self.packer_options = record.check_options(options.packer_options)
        self.restart = record.restart if options.restart is None else bool(options.restart)
        # The samples whose labels are all -100: served (no_loss="keep") or left out ("drop").
        self.samples_without_loss: int
        self.plan, self.samples_without_loss = self._plan(record, lengths)
        self._buffers = Buffers()
        self._served = tuple(options.segment_metadata or ())
        unknown = sorted(set(self._served) - set(self.metadata_columns))
        if unknown:
            raise DatasetError(
                f"{self.path}: segment_metadata names {', '.join(map(repr, unknown))}, not a "
                f"metadata column of this dataset; its columns: "
                f"{', '.join(sorted(self.metadata_columns)) or 'none'}"
            )

    def document_lengths(self) -> np.ndarray:
        """Every document's token count, to plan with and to check a stored plan against: from
        the split's offsets index where it has one (one read), else from the shard reader (one
        read a shard)."""
        try:
            lengths = index_lengths(self.path, self.manifest, self.split)
        except DatasetError:
            check_generation(self.path, self.manifest)  # prepared again meanwhile? say that
            raise
        return self.documents.lengths() if lengths is None else lengths

    def _plan(self, record: PackerType, lengths: np.ndarray) -> Planned:
        """The pack plan and its samples without loss: from the cache beside the shards when a
        run already computed them."""

        def make() -> Planned:
            packer = record.factory(overlong=self.overlong, **self.packer_options)
            plan = packer.plan(lengths, self.seq_len)
            empty = self.without_loss(plan, lengths, restart=self.restart)
            if self.no_loss == "drop":
                plan = keep_samples(plan, ~empty)
            return Planned(plan, int(empty.sum()))

        # Finding the samples without loss reads every loss mask where the split has no loss
        # index: worth a file even for a plan that is cheaper to compute than to read.
        if not (record.cache or self._masked):
            return make()
        key = fingerprint({**self._plan_key(), "restart": self.restart, "no_loss": self.no_loss})
        return cached_plan(
            self.path / PLANS_DIR / f"{key[:32]}.npz",
            key,
            make,
            lambda plan: plan_problem(plan, lengths, self.seq_len),
        )

    def _plan_key(self) -> dict[str, Any]:
        return {
            "packer": self.packer,
            "options": self.packer_options,
            "seq_len": self.seq_len,
            "overlong": self.overlong,
            "split": self.split,
            "dataset": self.manifest["fingerprint"],
        }

    @property
    def _masked(self) -> bool:
        """Whether a shard of the split has a loss mask."""
        return any(shard.get("mask") for shard in self.manifest["splits"][self.split]["shards"])

    def without_loss(self, plan: PackPlan, lengths: np.ndarray, *, restart: bool) -> np.ndarray:
        """Which samples of ``plan`` (over this split, whose documents have ``lengths`` tokens)
        have every label -100 (bool per sample): from the plan alone when no shard has a loss
        mask, else from the split's loss index (no shard file read), else from the masks, read
        a block of samples at a time (a split prepared before there was a loss index)."""
        bounds = plan.sample_bounds
        if not self._masked:
            return carry_no_loss(None, plan.seg_len, np.diff(bounds), restart=restart)
        runs = self._loss_runs(lengths)
        if runs is not None:
            doc_at = np.cumsum(lengths) - lengths  # every document's first token in the split
            begins = doc_at[plan.seg_doc] + plan.seg_start
            return runs_no_loss(runs, begins, plan.seg_len, np.diff(bounds), restart=restart)
        blocks = []
        for lo in range(0, len(plan), LOSS_BLOCK):
            hi = min(lo + LOSS_BLOCK, len(plan))
            seg = slice(bounds[lo], bounds[hi])
            _, mask = self._spans(plan.seg_doc[seg], plan.seg_start[seg], plan.seg_len[seg])
            segments = np.diff(bounds[lo : hi + 1])
            blocks.append(carry_no_loss(mask, plan.seg_len[seg], segments, restart=restart))
        return np.concatenate(blocks) if blocks else np.zeros(0, bool)

    def _loss_runs(self, lengths: np.ndarray) -> np.ndarray | None:
        """The runs of loss tokens of the split's loss index (fetched first into a remote
        dataset's mirror); ``None``, said once a process, where it has none to read."""
        entry = loss_entry(self.path, self.manifest, self.split)
        if entry is None:
            if (self.path, self.split) not in _MASKS_READ:
                _MASKS_READ.add((self.path, self.split))
                shards = len(self.manifest["splits"][self.split]["shards"])
                log.info(
                    f"{self.source} [{self.split}]: no loss index: finding the samples "
                    f"without loss reads the masks of its {shards} shards"
                )
            return None
        if self.mirror is not None:
            self.mirror.fetch(entry)
        return read_loss_runs(self.path, entry, int(lengths.sum()))

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started with spawn/forkserver receive a pickled dataset: send how to
        # open it, not the mapped arrays or the plugin manager (modules do not pickle), and the
        # generation it was opened at.
        return {
            "generation": self.manifest.get("generation"),
            "path": self.path if self.mirror is None else self.source,
            "options": self.options,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        try:
            self.__init__(state["path"], state["options"])  # type: ignore[misc]
            # A worker serves the samples its parent planned: from the dataset the parent
            # opened, never from one prepared into the directory since.
            if self.manifest.get("generation") != state["generation"]:
                raise generation_changed(
                    self.path, self.manifest.get("generation"), state["generation"]
                )
        except GristmillError as error:
            # Raised while a spawned DataLoader worker starts, torch would report only that the
            # worker exited; kept, it is raised by the first use, and torch hands it on to the
            # training loop as it is.
            self.__dict__.clear()
            self.__dict__["_unusable"] = error

    def __getattr__(self, name: str) -> Any:
        # Reached only for what a copy that could not reopen lacks (see __setstate__).
        unusable = self.__dict__.get("_unusable")
        if unusable is None or name.startswith("__"):
            raise AttributeError(name)
        raise unusable

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer stored with the dataset (for decoding), its files checked against the
        manifest's SHA-256 first."""
        for entry in self.manifest["tokenizer"].get("files", []):
            check_intact(self.path, entry)
        return load_saved(self.path, self.manifest, self.manager)

    @cached_property
    def document_metadata(self) -> DocumentMetadata:
        """The split's metadata columns (see :class:`~gristmill.serve.metadata.DocumentMetadata`)."""
        return DocumentMetadata(self.path, self.manifest, self.split)

    @property
    def metadata_columns(self) -> dict[str, str]:
        """Each metadata key and its type: ``bool``, ``int``, ``float`` or ``string``."""
        return self.document_metadata.columns

    def metadata(self, doc: int) -> dict[str, Any]:
        """Document ``doc``'s metadata (its index in the split): every column's value, ``None``
        where it has none."""
        n = self.manifest["splits"][self.split]["num_documents"]
        doc = operator.index(doc)
        if not 0 <= doc < n:
            raise IndexError(f"document {doc} out of range for {n} documents")
        return self.document_metadata.row(doc)

    def metadata_values(
        self, key: str, docs: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Column ``key``'s stored values of documents ``docs`` (every document's when
        ``None``): bool as int8 0/1, int as int64, float as float64, string as int32 codes;
        null as -1, the smallest int64, NaN and -1."""
        return self.document_metadata.values(key, docs)

    def decode_metadata(self, key: str, values: Sequence[Any] | np.ndarray) -> list[Any]:
        """Stored values of column ``key`` as Python values (strings for codes, ``None`` for
        null)."""
        return self.document_metadata.decode(key, values)

    def metadata_code(self, key: str, text: str) -> int:
        """The code of ``text`` in string column ``key`` (-1 when no document holds it)."""
        return self.document_metadata.code(key, text)

    def documents_of(self, index: int) -> np.ndarray:
        """The documents (indices in the split) of sample ``index``'s segments, in order."""
        n = len(self.plan)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples")
        lo, hi = self.plan.sample_bounds[index % n : index % n + 2].tolist()
        return self.plan.seg_doc[lo:hi]

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        n = len(self.plan)
        index = operator.index(index)
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range for {n} samples")
        lo, hi = self.plan.sample_bounds[index % n : index % n + 2].tolist()
        if self._served or hi - lo > ONE_BY_ONE:  # see ONE_BY_ONE
            return self._build(slice(lo, hi), [hi - lo])[0]
        return self._sample(lo, hi)

    def _sample(self, lo: int, hi: int) -> dict[str, np.ndarray]:
        """The sample of plan segments ``lo`` to ``hi``, alone: each segment sliced from its
        document and copied into the sample's arrays (see :func:`unshifted_sample`)."""
        plan, document = self.plan, self.documents.document
        docs, starts = plan.seg_doc[lo:hi].tolist(), plan.seg_start[lo:hi].tolist()
        parts = []
        for doc, start, length in zip(docs, starts, plan.seg_len[lo:hi].tolist()):
            ids, mask = document(doc)
            end = start + length
            parts.append((ids[start:end], None if mask is None else mask[start:end]))
        sample = unshifted_sample(parts, restart=self.restart)
        ids = sample["input_ids"]
        if self._id_limit is not None and len(ids) and ids.max() >= self._id_limit:
            seg = slice(lo, hi)
            self._refuse_ids(ids, plan.seg_doc[seg], plan.seg_start[seg], plan.seg_len[seg])
        return shift_sample(sample) if self.labels == "shifted" else sample

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Samples ``indices`` as a list, built together: what torch's DataLoader asks a
        map-style dataset for when it batches (instead of one ``ds[i]`` a sample). A
        :class:`~gristmill.serve.samples.SampleList`: its ``batch`` is :meth:`batch`'s."""
        return SampleList(self.batch(indices))

    def batch(self, indices: Sequence[int] | np.ndarray) -> Sequence[dict[str, np.ndarray]]:
        """Samples ``indices``, as ``[ds[i] for i in indices]`` but read together: a few array
        operations gather every segment of the batch (the torch loader fetches steps so). A
        :class:`~gristmill.serve.samples.SampleBatch`: a sequence of the sample dicts, over arrays of
        the whole batch that :class:`~gristmill.torch.Collator` takes as they are."""
        n = len(self.plan)
        index = np.asarray(indices).reshape(-1)
        if not len(index):
            return []
        if index.dtype.kind not in "iu":
            raise TypeError(f"sample indices must be integers, got {index.dtype}")
        if index.min() < -n or index.max() >= n:
            bad = index[(index < -n) | (index >= n)][0]
            raise IndexError(f"sample {bad} out of range for {n} samples")
        index = index % n
        first = self.plan.sample_bounds[index]
        segments = self.plan.sample_bounds[index + 1] - first
        # Every segment of the batch, sample by sample: the ranges first[k] + 0, 1, …
        ends = np.cumsum(segments)
        return self._build(
            np.arange(ends[-1]) + np.repeat(first - ends + segments, segments), segments
        )

    def shard_reads(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The shards that reading samples ``indices`` in order reads, in that order, a shard
        read again right after itself counted once: their indices in the split, and for each
        the position in ``indices`` of the sample that reads it. ``None`` where the shard
        format cannot say which shard holds a document (a loader then fetches nothing ahead).
        """
        shards_of = getattr(self.documents, "shards_of", None)
        index = np.asarray(indices, np.int64).reshape(-1)
        if shards_of is None or not len(index):
            return None if shards_of is None else (index[:0], index[:0])
        bounds = self.plan.sample_bounds
        first, segments = bounds[index], bounds[index + 1] - bounds[index]
        ends = np.cumsum(segments)
        seg = np.arange(ends[-1]) + np.repeat(first - ends + segments, segments)
        shards = shards_of(self.plan.seg_doc[seg])
        sample = np.repeat(np.arange(len(index)), segments)
        keep = np.ones(len(shards), bool)
        keep[1:] = shards[1:] != shards[:-1]
        return shards[keep], sample[keep]

    def shard_files(self, shard: int) -> list[dict[str, Any]]:
        """The manifest entries of the files the first read of shard ``shard`` (its index in
        the split) fetches from a remote dataset."""
        files = getattr(self.documents, "shard_files", None)
        return [] if files is None else files(shard)

    def _build(self, seg: slice | np.ndarray, segments: Sequence[int] | np.ndarray) -> SampleBatch:
        """The samples made of plan segments ``seg``, ``segments`` of them each, in order."""
        plan = self.plan
        docs, starts, lengths = plan.seg_doc[seg], plan.seg_start[seg], plan.seg_len[seg]
        tokens, mask = self._spans(docs, starts, lengths)
        # One max over the batch's ids (a small fraction of building it): an id past the
        # vocabulary, from a damaged shard, would reach the model as an index out of range.
        if self._id_limit is not None and len(tokens) and tokens.max() >= self._id_limit:
            self._refuse_ids(tokens, docs, starts, lengths)
        batch = build_samples(
            tokens,
            mask,
            lengths,
            segments,
            restart=self.restart,
            labels=self.labels,
            buffers=self._buffers,
        )
        at = list(accumulate(np.asarray(segments).tolist(), initial=0))
        batch.segments = Segments(docs, lengths, at, self.document_metadata, self._served)
        return batch

    @cached_property
    def _id_limit(self) -> int | None:
        """The vocabulary size, where the shards' dtype can hold an id past it."""
        vocab = self.manifest["tokenizer"].get("vocab_size")
        if vocab is None or np.iinfo(self.manifest["dtype"]).max < vocab:
            return None
        return int(vocab)

    def _refuse_ids(
        self, tokens: np.ndarray, docs: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> None:
        """Name the shard file and document of the first id past the vocabulary in ``tokens``
        (the segments ``docs``, ``starts``, ``lengths``, concatenated)."""
        at = int(np.flatnonzero(tokens >= self._id_limit)[0])
        ends = np.cumsum(lengths)
        k = int(np.searchsorted(ends, at, "right"))
        doc, token = int(docs[k]), int(starts[k] + at - (ends[k] - lengths[k]))
        shards = self.manifest["splits"][self.split]["shards"]
        first = np.cumsum([0] + [shard["num_documents"] for shard in shards])
        shard = int(np.searchsorted(first, doc, "right")) - 1
        raise DatasetError(
            f"{self.path / shards[shard]['tokens']['path']}: token id {tokens[at]} in document "
            f"{doc - first[shard]} of this shard (document {doc} of the {self.split!r} split, "
            f"token {token}) is not below the vocabulary size {self._id_limit}: the shard is "
            f"damaged; run `gristmill verify {self.path}` and prepare the dataset again"
        )

    @cached_property
    def _bulk(self) -> ReadsSpans | None:
        """The reader when it fetches many slices at once (asked once: isinstance is slow)."""
        return self.documents if isinstance(self.documents, ReadsSpans) else None

    def _spans(
        self, docs: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The segments' tokens and loss mask, concatenated: in bulk from a reader that offers
        ``spans`` (as ``memmap-shards`` does), else one ``document()`` call per segment."""
        if self._bulk is not None:
            return self._bulk.spans(docs, starts, lengths)
        parts = []
        for doc, start, length in zip(docs.tolist(), starts.tolist(), lengths.tolist()):
            ids, mask = self.documents.document(doc)
            end = start + length
            parts.append((ids[start:end], None if mask is None else mask[start:end]))
        tokens, mask, _ = join_parts(parts)
        return tokens, mask

    def samples(
        self, sampler: str = "sequential", *, epoch: int = 0, **options: Any
    ) -> Iterator[dict[str, np.ndarray]]:
        """Samples of one epoch in a sampler plugin's order, on this process."""
        order = self.sampler(sampler, global_batch=1, **options).order(epoch)
        return self._in_blocks(order)

    def _in_blocks(self, order: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Samples ``order``, built a block at a time (see :meth:`batch`)."""
        for lo in range(0, len(order), SAMPLE_BLOCK):
            yield from self.batch(order[lo : lo + SAMPLE_BLOCK])

    def sampler(self, name: str, *, global_batch: int, **options: Any) -> Sampler:
        """The sampler plugin ``name`` over this dataset's samples, seeded with ``seed``;
        ``options`` are the user's, checked against those it declares."""
        record = self.manager.get(SamplerType, name)
        return record.factory(
            len(self),
            seed=self.seed,
            lengths=self.sample_lengths(),
            global_batch=global_batch,
            shards=self.sample_shards(),
            **record.check_options(options),
        )

    def sample_shards(self) -> np.ndarray | None:
        """The shard (its index in the split) of every sample's first token (int64), from the
        plan and the offsets index; ``None`` where the shard format cannot say."""
        shards_of = getattr(self.documents, "shards_of", None)
        if shards_of is None:
            return None
        plan = self.plan
        return np.asarray(shards_of(plan.seg_doc[plan.sample_bounds[:-1]]), np.int64)

    def sample_lengths(self) -> np.ndarray:
        """Tokens in every sample (int64), from the plan alone."""
        plan = self.plan
        if not len(plan):
            return np.zeros(0, np.int64)
        return np.add.reduceat(plan.seg_len, plan.sample_bounds[:-1]).astype(np.int64)

    def with_seed(self, seed: int) -> Dataset:
        """The same dataset whose samplers are seeded with ``seed``."""
        seeded = Dataset.__new__(Dataset)
        seeded.__setstate__({**self.__getstate__(), "options": replace(self.options, seed=seed)})
        seeded.plan  # noqa: B018 (raises here, in the caller, if it could not reopen)
        return seeded

    @property
    def identity(self) -> str:
        """Which samples this is: the dataset, split and packing (a loader's state names it)."""
        key = {**self._plan_key(), "restart": self.restart, "labels": self.labels}
        if self.no_loss != "keep":  # the default keeps the identities that loaders saved
            key["no_loss"] = self.no_loss
        return fingerprint(key)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.samples()

    def __repr__(self) -> str:
        shown = redacted(os.fspath(self.source))  # a URL without its password
        return (
            f"Dataset({shown!r}, split={self.split!r}, samples={len(self)}, "
            f"seq_len={self.seq_len}, packer={self.packer!r})"
        )


def where(
    path: str | os.PathLike[str], options: DatasetOptions
) -> tuple[str | os.PathLike[str], Mirror | None]:
    """What ``path`` names, and the mirror that holds its files when it is a URL
    (:mod:`gristmill.plugin.remote`): a directory keeps no remote option, which it would
    ignore."""
    if is_remote(path):
        mirror = open_mirror(
            os.fspath(path),
            storage_options=options.storage_options,
            cache_limit=options.cache_limit,
        )
        return os.fspath(path), mirror
    given = [name for name in ("storage_options", "cache_limit") if getattr(options, name)]
    given += ["prefetch"] if options.prefetch is not None else []
    if given:
        raise DatasetError(
            f"{' and '.join(given)} apply to a dataset at a URL (s3://, gs://, https://…); "
            "this is a local directory",
            where=str(path),
        )
    return local_path(path), None


LOSS_BLOCK = 1024  # samples whose loss masks are read at once to find those without loss
# (dataset directory, split) whose masks this process read for want of a loss index: said once.
_MASKS_READ: set[tuple[Path, str]] = set()
SAMPLE_BLOCK = 16  # samples an iteration over the dataset builds at once
# Segments a sample alone (ds[i]) reads one document() call each, up to this many: beyond, the
# batch's machinery (a reader's spans for all of them) costs less. A sample with metadata to
# serve takes that path too: a batch knows its segments' documents.
ONE_BY_ONE = 32


class Planned(NamedTuple):
    plan: PackPlan
    without_loss: int  # samples whose labels are all -100 (served, or left out of the plan)


def cached_plan(
    path: Path, key: str, make: Callable[[], Planned], check: Callable[[PackPlan], str | None]
) -> Planned:
    """The plan stored at ``path`` for ``key``, or ``make()``'s, stored there for the next process.

    A stored plan is served only if it was stored for ``key`` and ``check`` finds no problem in
    it; a file that cannot be read or does not match is recomputed with a warning naming it.
    Several ranks opening a dataset at once may all compute the plan: each writes it under its own
    temporary name, synced, and renames it into place, so the file is always whole. A directory
    that cannot be written (a read-only dataset) just means no cache.
    """
    import zipfile  # only its error type; np.load imports the module to read a plan anyway

    problem = None
    try:
        planned, stored_key = _load_plan(path)
    except FileNotFoundError:
        pass
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        NotImplementedError,  # a damaged zip directory naming a compression zipfile lacks
        zipfile.BadZipFile,
    ) as error:
        problem = f"not a readable pack plan ({type(error).__name__}: {error})"
    else:
        problem = (
            "stored for another dataset or packing" if stored_key != key else check(planned.plan)
        )
        if problem is None and planned.without_loss < 0:
            problem = f"{planned.without_loss} samples without loss"
        if problem is None:
            return planned
        problem = f"does not match the dataset: {problem}"
    if problem is not None:
        log.warning(f"{path}: {problem}; recomputed the pack plan (a cache, safe to delete)")
    planned = make()
    with contextlib.suppress(OSError):
        _store_plan(path, key, planned)
    return planned


def _load_plan(path: Path) -> tuple[Planned, str]:
    with np.load(path, allow_pickle=False) as stored:
        plan = PackPlan(**{k: stored[k] for k in PLAN_ARRAYS}, dropped=int(stored["dropped"]))
        return Planned(plan, int(stored["without_loss"])), str(stored["key"])


def _store_plan(path: Path, key: str, planned: Planned) -> None:
    plan = planned.plan
    path.parent.mkdir(exist_ok=True)
    arrays = {k: getattr(plan, k) for k in PLAN_ARRAYS}
    write_atomic(
        path,
        lambda f: np.savez(
            f,
            key=np.array(key),
            dropped=np.int64(plan.dropped),
            without_loss=np.int64(planned.without_loss),
            **arrays,
        ),
    )


@takes(DatasetOptions, positional=("split",))
def open_dataset(
    path: str | os.PathLike[str],
    options: DatasetOptions,
    *,
    manager: PluginManager | None = None,
) -> Dataset:
    """Open a prepared dataset as map-style packed samples (see :class:`Dataset`).

    ``path`` is a directory, or a URL (``s3://``, ``gs://``, ``https://``, any fsspec knows):
    a remote dataset is read through a local mirror that fetches each file at its first read,
    checked against the manifest (:mod:`gristmill.plugin.remote`; ``storage_options`` go to the
    filesystem, ``cache_limit`` bounds the mirror, ``prefetch`` is how many shards the torch
    loader fetches ahead of its reads).

    Opening reads the manifest and maps the shard files: no pass over the tokens, and no shard
    file read (a split with loss masks finds its samples without loss in its loss index; one
    prepared before there was one reads its masks when the plan is not cached yet). Every file is
    checked against the manifest's SHA-256 before its bytes are first used, once per machine
    (:mod:`gristmill.store.integrity`): the offsets files at open, a shard's files at its first read;
    a damaged file raises :class:`~gristmill.errors.DatasetError`. Packers: ``none``
    (each sample is one document), ``first-fit`` (samples of ``seq_len`` tokens filled with whole
    documents, best fit over the whole split), ``greedy-stream`` (the same online, as ``stream()``
    packs; ``packer_options={"buffer_size": N}``), ``window`` (best fit among the next
    documents, keeping the corpus order; ``window_N``), ``concat-chunk`` (the token stream cut
    into ``seq_len`` windows, for pretraining), or any a plugin adds; names as users type them
    (``first_fit``). A document longer than
    ``seq_len`` is truncated, cut into pieces or dropped (``overlong``: ``"truncate"``, or
    ``"truncate-left"`` to keep its end, ``"fragment"``, ``"drop"``; ``ds.plan.dropped`` counts
    drops). Samples whose labels are all -100 (``ds.samples_without_loss`` counts them) are
    served with a warning, or left out with ``no_loss="drop"``. ``restart``: whether positions
    and labels restart at every document (default: the packer's; all but ``concat-chunk`` do).
    ``labels``: ``"unshifted"`` (models that shift themselves, as Hugging Face ones do) or
    ``"shifted"`` (input/target pairs for a plain loop).
    """
    dataset = Dataset(path, options, manager=manager)
    empty = dataset.samples_without_loss
    if empty and dataset.no_loss == "keep":
        log.warning(
            f"{dataset.source} [{dataset.split}]: {empty:,} of {len(dataset):,} samples carry no loss "
            f"(every label -100: a completion cut away by overlong={dataset.overlong!r}, or a "
            "document without loss tokens); they are served as they are: "
            "no_loss='drop' leaves them out, overlong='truncate-left' keeps the end of a "
            "long document instead of its start"
        )
    elif empty:
        log.info(f"{dataset.source} [{dataset.split}]: {empty:,} samples without loss left out")
    return dataset
