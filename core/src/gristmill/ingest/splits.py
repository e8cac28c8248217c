"""Which split of a dataset each document goes to: ``train``, ``val`` or ``test``.

Two rules, both from what a document is, never from how the input was cut into tasks:

- a source's own split, when the run keeps them (``keep_source_splits``): a source over data
  with named splits (:class:`~gristmill.plugin.components.HasSplits`: a Hub dataset's, a saved
  ``DatasetDict``'s) is read as one source per split (:func:`kept_splits`); a file or folder
  whose name begins with a split's name (``val.jsonl``, ``test-00000-of-00001.parquet``) is
  that split (:func:`named_by`). ``validation``, ``valid`` and ``dev`` are read as ``val``.
- the fractions: a document of no split of its own, or of a source's ``train``, goes to
  ``val`` or ``test`` when a seeded hash of its content falls in their share
  (:func:`assign_splits`), so its split is the same in every run, for any worker count and
  source order, and identical documents share it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gristmill.errors import DataError
from gristmill.options import PrepareOptions
from gristmill.plugin.components import HasSplits, Source

log = logging.getLogger("gristmill")

SPLITS = ("train", "val", "test")  # a dataset's splits, in the manifest's order
NAMES = {  # what data calls its splits → the dataset's split
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
# A name begins with a split's when the split's name is followed by a separator, a digit or
# nothing: train.jsonl, train-00000-of-00002.parquet, test_2.csv, but not trainer.jsonl.
NAMED = re.compile(r"([a-z]+)(?:[-._ 0-9]|$)")
SHOWN = 5  # sources of no split named in the log


def in_order(names: Iterable[str]) -> list[str]:
    """Split names as a dataset lists them: train, val, test, then any other by name."""
    return sorted(
        names, key=lambda name: (SPLITS.index(name) if name in SPLITS else len(SPLITS), name)
    )


def named_by(path: str) -> str | None:
    """The split a file or folder's name makes it (``validation.jsonl`` → ``val``), or None."""
    found = NAMED.match(os.path.basename(os.path.normpath(path)).lower())
    return NAMES.get(found.group(1)) if found else None


def kept_splits(
    sources: Sequence[Source], options: PrepareOptions
) -> tuple[list[Source], list[dict[str, str]]]:
    """``sources`` with those of named splits read one split at a time (with
    ``keep_source_splits``; else as they are), and for each what its provenance says of its
    split: ``{"split": NAME}``, or nothing for a source whose documents the fractions share out.

    Refused, with what to do instead: a split that has no place in a dataset (``unsupervised``),
    a fraction for a split that a source has of its own, and keeping the splits of sources that
    have none.
    """
    if not options.keep_source_splits:
        return list(sources), [{} for _ in sources]
    kept: list[Source] = []
    splits: list[str | None] = []
    for source in sources:
        named = source.named_splits() if isinstance(source, HasSplits) else {}
        if not named:
            kept.append(source)
            splits.append(named_by(source.spec) if os.path.exists(source.spec) else None)
            continue
        for name, part in named.items():
            kept.append(part)
            splits.append(_placed(source.spec, name))
    _check(kept, splits, options)
    return kept, [{} if split is None else {"split": split} for split in splits]


def _placed(spec: str, name: str) -> str:
    """The dataset's split for the data's split ``name`` of the source ``spec``."""
    if name.lower() in NAMES:
        return NAMES[name.lower()]
    raise DataError(
        f"its split {name!r} has no place in a dataset, whose splits are {', '.join(SPLITS)} "
        "(validation, valid and dev are read as val): name the splits to keep one by one "
        "(hub:NAME#SPLIT, a DatasetDict's split folder), or prepare this one without "
        "keep_source_splits",
        where=spec,
    )


def _check(kept: Sequence[Source], splits: Sequence[str | None], options: PrepareOptions) -> None:
    """Refuse what keeping the sources' splits cannot mean; log where each source goes."""
    if not any(splits):
        raise DataError(
            "keep_source_splits: no source has splits of its own (a Hub dataset's or a saved "
            "DatasetDict's, or files and folders named train.*, val.*, validation.*, dev.*, "
            "test.*): leave it out, or give such sources"
        )
    for split, fraction in (("val", options.val_fraction), ("test", options.test_fraction)):
        own = [source.spec for source, s in zip(kept, splits) if s == split]
        if fraction and own:
            raise DataError(
                f"{own[0]} is a {split} split of its own, and {split}_fraction would add other "
                f"documents to it: leave {split}_fraction out, or keep_source_splits off"
            )
    _report(kept, splits, options)


def _report(kept: Sequence[Source], splits: Sequence[str | None], options: PrepareOptions) -> None:
    """Say, in the log, how many sources went to each split, and where those of none go."""
    counts = Counter(s for s in splits if s is not None)
    told = ", ".join(f"{s} {counts[s]:,}" for s in SPLITS if counts[s])
    none = [source.spec for source, s in zip(kept, splits) if s is None]
    if none:
        shown = ", ".join(none[:SHOWN]) + (
            f" and {len(none) - SHOWN:,} more" if none[SHOWN:] else ""
        )
        shares = [s for s, f in zip(SPLITS[1:], (options.val_fraction, options.test_fraction)) if f]
        goes = (
            f"are shared out between train and {' and '.join(shares)}" if shares else "go to train"
        )
        told += f"; {len(none):,} with none ({shown}) {goes}"
    log.info(f"sources kept in their own splits (each named in the manifest): {told}")


def planned_splits(
    options: PrepareOptions, provenance: Sequence[Mapping[str, Any]]
) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """The splits a run writes (``train`` always; ``val`` and ``test`` where a fraction or a
    source's own split asks for them) and each source's own split, by position (None: shared
    out by the fractions)."""
    own = tuple(entry.get("split") for entry in provenance)
    wanted = {"train", *filter(None, own)}
    wanted |= {"val"} if options.val_fraction > 0 else set()
    wanted |= {"test"} if options.test_fraction > 0 else set()
    return tuple(s for s in SPLITS if s in wanted), own


def hash_share(data: bytes, key: bytes) -> float:
    """Where ``data`` falls in [0, 1) under a keyed hash (53 bits of BLAKE2b, exact as a float):
    the content-chosen fraction behind the val/test splits and data-list ratios."""
    word = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "little")
    return (word >> 11) / float(1 << 53)


def assign_splits(
    digests: Sequence[bytes], seed: int, val_fraction: float, test_fraction: float = 0.0
) -> np.ndarray:
    """``"train"``, ``"val"`` or ``"test"`` per document, from a seeded hash of its content.

    The hash gives each document a number in [0, 1): below ``val_fraction`` it is ``val``, at or
    above ``1 - test_fraction`` it is ``test`` (never both: ``val`` is chosen first). So a
    document's split depends only on its content and the seed, and each fraction moves only the
    documents of its own split: raising ``test_fraction`` never takes one from ``val``.
    """
    if val_fraction <= 0 and test_fraction <= 0:
        return np.full(len(digests), "train")
    key = (seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    uniform = np.fromiter((hash_share(d, key) for d in digests), np.float64, count=len(digests))
    test = (
        np.where(uniform >= 1.0 - test_fraction, "test", "train") if test_fraction > 0 else "train"
    )
    return np.where(uniform < val_fraction, "val", test)
