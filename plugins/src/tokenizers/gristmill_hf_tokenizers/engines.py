"""Encoding engines: the tokenizer's own library (``hf``, the reference) or gigatoken, a faster one.

Both ``hf:`` and ``tokenizer.json`` tokenizers encode through an :class:`EngineSwitch`:

- ``hf`` is the library the tokenizer was written for (``tokenizers``, through ``transformers`` for
  ``hf:``); its ids and offsets are, by definition, right.
- ``gigatoken`` re-implements byte-level BPE (and SentencePiece-style BPE with byte fallback) in
  Rust, much faster (docs/benchmarks.md). It gives ids only; the character offsets that loss masks
  need come from the ids for a byte-level BPE (:mod:`gristmill_hf_tokenizers.offsets`), and from
  ``hf`` for any other tokenizer (its batches with loss masks are encoded by ``hf``).
- ``auto`` (the default) is gigatoken when it is installed and loads the tokenizer, else hf.

A fast engine is trusted only after it agrees with ``hf``: its first batch is also encoded by
``hf`` and compared id for id, and its first batch with offsets offset for offset. On a
difference in ids, or when it raises on a text that ``hf`` encodes, it is dropped for the rest of
the tokenizer object's life with a warning, and ``hf`` carries on; on a difference in offsets,
only its offsets are. What the check learned travels with a copy of the tokenizer (:class:`Checked`,
:meth:`EngineSwitch.learned`): prepare checks once, in its main process, and its workers take
the result on trust, never loading the reference to check again. A document whose offsets the ids cannot prove (its tokens do not add up to
its text), or whose text holds a character newer than this Python's Unicode tables, is encoded by
``hf`` alone, and counted (:meth:`EngineTokenizer.by_reference`). The engine never changes a
tokenizer's fingerprint, saved config or prepared data: the ids and offsets are the same.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from gristmill.errors import GristmillError, MissingDependencyError, first_line
from gristmill.plugin.workers import trim_memory
from gristmill_hf_tokenizers.common import Specials, log
from gristmill_hf_tokenizers.offsets import OffsetTable, Unsupported, offset_table

AUTO = "auto"
REFERENCE = "hf"
ENGINES = (REFERENCE, "gigatoken")  # what factory/load accept besides "auto"
CHECK_CHARS = 1 << 18  # text compared with the reference on first use (256 Ki characters)
# Growth of the process, since gigatoken's encoder was built, that builds it again (Gigatoken),
# and the text encoded between two looks at the process's size.
CACHE_BUDGET = 64 << 20
LOOK_CHARS = 1 << 20
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
GIGATOKEN_HINT = "pip install gigatoken (or pip install 'gristmill[hf]')"
# Why a document went to the reference while the fast engine was in use (EngineSwitch.by_reference).
NEWER_UNICODE = "newer-unicode"  # a character this Python's Unicode tables do not know
UNPROVEN = "unproven-offsets"  # its tokens do not add up to its text (see offsets.py)

Arrays = tuple[list[np.ndarray], list[np.ndarray] | None]  # ids, and token start offsets
Reference = Callable[[list[str], bool], Arrays]  # (texts, offsets): the hf engine


class EngineError(GristmillError):
    """An engine that was asked for by name cannot encode this tokenizer."""


@dataclass(frozen=True)
class Checked:
    """What a tokenizer whose fast engine agreed with the reference hands a copy of itself (a
    prepare worker's, through ``load(checked=...)``): the copy takes the fast engine on trust and
    needs the reference only for the documents the fast engine leaves to it."""

    vocab_size: int  # the reference's, which the copy then needs not open to learn it
    offsets: bool  # its offsets agreed too (a batch with loss masks was checked)

    @classmethod
    def from_mapping(cls, given: Mapping[str, Any] | None) -> Checked | None:
        return None if given is None else cls(int(given["vocab_size"]), bool(given["offsets"]))

    def as_mapping(self) -> dict[str, Any]:
        return asdict(self)


class FastEngine(Protocol):
    """An engine besides the reference: ids only, one uint32 array per text."""

    name: str

    def encode(self, texts: list[str]) -> list[np.ndarray]: ...


class Gigatoken:
    """gigatoken, built from the tokenizer's JSON; encodes on the calling thread.

    gristmill parallelises with worker processes (one per core), so gigatoken's own thread pool
    is never used (``parallel=False``): no oversubscription, and no pool inherited across a fork.

    gigatoken keeps every distinct pre-token it has encoded (its pre-token cache), with no limit
    and no way to empty it: over text of many distinct words a worker would grow by hundreds of
    MiB. So the encoder is built again from the JSON (a fraction of a second) whenever the
    process has grown by ``cache_budget`` bytes since it was built; the ids never depend on the
    cache. The process's size is read where the system tells it (Linux); elsewhere the cache
    is not bounded.
    """

    name = "gigatoken"
    cache_budget = CACHE_BUDGET

    def __init__(self, tokenizer_json: str):
        parsed = json.loads(tokenizer_json)
        if parsed.get("truncation") is not None or parsed.get("padding") is not None:
            # A saved file's own settings (a document is never cut or padded), which the
            # reference drops too (backend.open_file).
            tokenizer_json = json.dumps({**parsed, "truncation": None, "padding": None})
        self._json = tokenizer_json
        self._tok = _gigatoken().Tokenizer.from_json(tokenizer_json)  # its refusals first
        if ignored := _ignored_step(parsed.get("pre_tokenizer")):
            raise ValueError(
                f"it would skip the tokenizer's {ignored} pre-tokenizer (its ids would differ)"
            )
        self._built_at = resident_bytes()
        self._unlooked = 0  # characters encoded since the process's size was last read
        self.rebuilds = 0

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = self._encode(texts)
        self._unlooked += sum(map(len, texts))
        if self._unlooked >= LOOK_CHARS:
            self._unlooked = 0
            self._bound_cache()
        return ids

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        # A uint32 array per text, no Python int per token. Not encode_batch: its awkward array
        # costs an import of awkward in every worker, and unpacking it, for no faster encoding.
        # (A function of its own: its bound ``encode`` must not keep an old encoder alive.)
        encode = self._tok.backend.encode
        return [encode(text) for text in texts]

    def _bound_cache(self) -> None:
        now = resident_bytes()
        if now is None or self._built_at is None or now - self._built_at <= self.cache_budget:
            return
        self._tok = None  # the old cache goes before the new encoder comes
        trim_memory()
        self._tok = _gigatoken().Tokenizer.from_json(self._json)
        self.rebuilds += 1
        # Measured again: what did not shrink is not the cache, and must not rebuild it again.
        self._built_at = resident_bytes()

    # The Rust tokenizer does not pickle; a worker process rebuilds it from the JSON.
    def __getstate__(self) -> dict[str, Any]:
        return {"json": self._json}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["json"])  # type: ignore[misc]


class EngineSwitch:
    """The engine a tokenizer object encodes with, checked against the reference on first use."""

    def __init__(
        self,
        spec: str,
        fast: FastEngine | None,
        build: Callable[[], FastEngine | None] | None = None,
        tokenizer_json: Callable[[], str] | None = None,
        release: Callable[[], None] | None = None,
        checked: Checked | None = None,
    ):
        self.spec = spec
        self._fast = fast
        # Called after each batch once the fast engine has agreed with the reference: the
        # reference may go until it is needed again (its owner decides).
        self._release = release
        # auto: the fast engine is made on first use, so that a tokenizer that never encodes
        # (one opened to be saved, fingerprinted or decoded with) never pays for loading it.
        self._build = build
        # The fast engine has matched the reference on a whole batch (here, or where ``checked``
        # comes from).
        self.checked = checked is not None
        # The offset table (see offsets.py) is read from the tokenizer's JSON on the first batch
        # that needs offsets; None once read means that there is none.
        self._json = tokenizer_json
        self._table: OffsetTable | None = None
        self.offsets_checked = checked is not None and checked.offsets  # and its offsets
        # Documents the reference encoded although the fast engine was in use, per reason.
        self.by_reference: Counter[str] = Counter()

    @property
    def fast(self) -> FastEngine | None:
        if self._build is not None:
            build, self._build = self._build, None
            self._fast = build()
        return self._fast

    @fast.setter
    def fast(self, engine: FastEngine | None) -> None:
        self._build, self._fast = None, engine

    @property
    def name(self) -> str:
        return REFERENCE if self.fast is None else self.fast.name

    def learned(self) -> dict[str, Any]:
        """What a copy of the tokenizer can take on trust, as keywords of its family's ``load``:
        ``engine="hf"`` once the fast engine failed its check (or there is none), ``checked``
        once it passed; nothing before either (the copy checks on its first batch)."""
        if self._build is not None:
            return {}  # never encoded: the fast engine is not even built
        if self._fast is None:
            return {"engine": REFERENCE}
        if not self.checked:
            return {}
        return {"checked": {"offsets": self.offsets_checked}}

    def table(self) -> OffsetTable | None:
        """The fast engine's offset table; None where the tokenizer has none (said once)."""
        if self._json is not None and self.fast is not None:
            source, self._json = self._json, None
            try:
                self._table = offset_table(source())
            except Unsupported as exc:
                log.info(
                    f"{self.spec}: the {self.fast.name} engine cannot give token offsets for "
                    f"this tokenizer ({exc}): batches with loss masks are encoded with "
                    f"{REFERENCE}"
                )
        return self._table

    def encode_batch(self, texts: Sequence[str], offsets: bool, reference: Reference) -> Arrays:
        arrays = self._encode_batch(list(texts), offsets, reference)
        if self._release is not None and self.checked and self.fast is not None:
            self._release()
        return arrays

    def _encode_batch(self, texts: list[str], offsets: bool, reference: Reference) -> Arrays:
        if self.fast is None or not texts or (offsets and self.table() is None):
            return reference(texts, offsets)
        # A character that this Python's Unicode tables do not know was assigned by a newer
        # Unicode version: one engine's split regex may count it a letter and the other not
        # (gigatoken 0.10 knows U+A7CF as a letter, hf does not), so its text goes to the
        # reference. Such texts are rare; ASCII ones are never checked.
        newer = [i for i, text in enumerate(texts) if not text.isascii() and _newer_unicode(text)]
        if not newer:
            return self._encode_fast(texts, offsets, reference)
        self.by_reference[NEWER_UNICODE] += len(newer)
        chosen = set(newer)
        rest = [i for i in range(len(texts)) if i not in chosen]
        parts = [(newer, reference([texts[i] for i in newer], offsets))]
        if rest:
            parts.append((rest, self._encode_fast([texts[i] for i in rest], offsets, reference)))
        return _merged(len(texts), parts, offsets)

    def _encode_fast(self, texts: list[str], offsets: bool, reference: Reference) -> Arrays:
        """Ids (and offsets) from the fast engine, checked on first use; the reference's once
        it failed."""
        fast = self.fast
        if fast is None:
            return reference(texts, offsets)
        try:
            ids = fast.encode(texts)
        except Exception as exc:
            # A text that hf refuses too (a lone surrogate) is the data's fault: hf raises it
            # here and the fast engine stays. Otherwise the fast engine is what failed.
            expected = reference(texts, offsets)
            self._fall_back(f"failed on this batch ({first_line(exc)})")
            return expected
        table = self.table() if offsets else None
        starts = table.starts(texts, ids) if table is not None else None
        unchecked = not self.checked or (offsets and not self.offsets_checked)
        if unchecked and not self._agrees(texts, ids, starts, reference):
            return reference(texts, offsets)
        if starts is None:
            return ids, None
        return self._unproven_by_reference(texts, ids, starts, reference)

    def _agrees(
        self,
        texts: list[str],
        ids: list[np.ndarray],
        starts: list[np.ndarray | None] | None,
        reference: Reference,
    ) -> bool:
        """Whether the first texts of a batch get the reference's ids (and offsets, the
        documents the table places); if not, the engine (or its offsets) is dropped with a
        warning."""
        # The first texts of the batch, up to CHECK_CHARS: the reference is slow, and a batch
        # of long documents would otherwise cost as much as encoding it all with hf.
        sample = texts[: _sample_size(texts)]
        expected, expected_starts = reference(sample, starts is not None)
        differs = _first_difference(ids[: len(sample)], expected)
        if differs is not None:
            self._fall_back(
                f"gives other ids than {REFERENCE} for the text at index {differs} of its "
                "first batch"
            )
            return False
        # Empty texts prove nothing: check again on the next batch.
        self.checked = self.checked or any(len(doc) for doc in expected)
        if starts is None or expected_starts is None:
            return True
        proven = [i for i, doc in enumerate(starts[: len(sample)]) if doc is not None]
        got = [doc for doc in starts[: len(sample)] if doc is not None]
        differs = _first_difference(got, [expected_starts[i] for i in proven])
        if differs is not None:
            log.warning(
                f"{self.spec}: the offsets of the {self.name} engine differ from {REFERENCE}'s "
                f"for the text at index {proven[differs]} of its first batch with loss masks; "
                f"batches with loss masks are encoded with {REFERENCE} from now on"
            )
            self._table = None
            return False
        self.offsets_checked = self.offsets_checked or any(len(expected[i]) for i in proven)
        return True

    def _unproven_by_reference(
        self,
        texts: list[str],
        ids: list[np.ndarray],
        starts: list[np.ndarray | None],
        reference: Reference,
    ) -> Arrays:
        """The documents whose offsets the table cannot prove, from the reference (counted)."""
        unproven = [i for i, doc in enumerate(starts) if doc is None]
        if unproven:
            if not self.by_reference[UNPROVEN]:
                log.warning(
                    f"{self.spec}: the {self.name} engine cannot place the tokens of "
                    f"{len(unproven)} document(s) of this batch (first: index {unproven[0]}): "
                    "they do not add up to the text (an added token took the white space "
                    "beside it, or the normalizer changes the text). Such documents are "
                    f"encoded with {REFERENCE} (the same tokens, more slowly)"
                )
            self.by_reference[UNPROVEN] += len(unproven)
            ref_ids, ref_starts = reference([texts[i] for i in unproven], True)
            assert ref_starts is not None
            for i, doc, doc_starts in zip(unproven, ref_ids, ref_starts):
                ids[i], starts[i] = doc, doc_starts
        return ids, starts  # type: ignore[return-value]

    def _fall_back(self, problem: str) -> None:
        assert self.fast is not None
        log.warning(
            f"{self.spec}: the {self.fast.name} engine {problem}; encoding with {REFERENCE} "
            f"from now on (--engine {REFERENCE} skips {self.fast.name})"
        )
        self.fast = None


def _merged(count: int, parts: list[tuple[list[int], Arrays]], offsets: bool) -> Arrays:
    """The encodings of disjoint subsets of a batch (their indices), in the batch's order."""
    ids: list[np.ndarray] = [np.zeros(0, np.uint32)] * count
    starts: list[np.ndarray] = [np.zeros(0, np.int64)] * count
    for indices, (part_ids, part_starts) in parts:
        for k, i in enumerate(indices):
            ids[i] = part_ids[k]
            if part_starts is not None:
                starts[i] = part_starts[k]
    return ids, starts if offsets else None


def choose(
    spec: str,
    engine: str,
    tokenizer_json: Callable[[], str],
    release: Callable[[], None] | None = None,
    checked: Checked | None = None,
) -> EngineSwitch:
    """The engine for ``engine`` (``auto``, ``hf`` or ``gigatoken``); ``release`` lets the
    reference go once the fast engine agreed with it (:class:`EngineSwitch`); ``checked``: it
    agreed already, where this tokenizer was copied from.

    ``auto`` quietly takes ``hf`` when gigatoken is missing or refuses the tokenizer; asking for
    ``gigatoken`` by name makes either a clear error.
    """
    if engine not in (AUTO, *ENGINES):
        raise EngineError(
            f"{spec}: unknown engine {engine!r}; choose one of {', '.join((AUTO, *ENGINES))}"
        )
    if engine == REFERENCE:
        return EngineSwitch(spec, None)
    if engine == AUTO:
        build = functools.partial(_gigatoken_if_any, spec, tokenizer_json)
        return EngineSwitch(spec, None, build, tokenizer_json, release, checked)
    try:
        _gigatoken()
    except ImportError:
        raise MissingDependencyError(
            f"{spec}: engine 'gigatoken' needs the gigatoken package: {GIGATOKEN_HINT}"
        ) from None
    try:
        fast = Gigatoken(tokenizer_json())
    except Exception as exc:  # gigatoken refuses a model, normalizer or split regex it lacks
        raise EngineError(
            f"{spec}: the gigatoken engine does not support this tokenizer: {first_line(exc)}. "
            f"Use --engine {REFERENCE} (or auto)"
        ) from None
    return EngineSwitch(spec, fast, None, tokenizer_json, release, checked)


class EngineTokenizer(ABC):
    """What the ``hf:`` and ``tokenizer.json`` tokenizers share: the special tokens, and the
    engine that encodes (see the module docstring), with the subclass's own library as the
    reference (``_encode_reference``). ``release`` lets the reference go once the fast engine
    has agreed with it: the subclass opens it again when it is needed after all. ``checked``: it
    agreed where this tokenizer was copied from (:class:`Checked`)."""

    def __init__(
        self,
        spec: str,
        specials: Specials,
        vocab_size: int,
        engine: str,
        tokenizer_json: Callable[[], str],
        release: Callable[[], None] | None = None,
        checked: Checked | None = None,
    ):
        self.spec = spec
        self.specials = specials
        self.bos_id, self.eos_id, self.pad_id = specials.bos_id, specials.eos_id, specials.pad_id
        self.add_bos, self.add_eos = specials.add_bos, specials.add_eos
        self.vocab_size = vocab_size
        self._engines = choose(spec, engine, tokenizer_json, release, checked)

    @property
    def engine(self) -> str:
        """The engine encoding now: ``gigatoken`` or ``hf`` (also after a fallback)."""
        return self._engines.name

    def encode_batch(
        self, texts: Sequence[str], *, offsets: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        return self._engines.encode_batch(texts, offsets, self._encode_reference)

    def handoff(self) -> dict[str, Any]:
        """What a copy of this tokenizer (prepare's workers load the dataset's) can take on trust
        from what this one learned encoding: keywords of its family's ``load``."""
        learned = self._engines.learned()
        if "checked" in learned:
            learned["checked"] = Checked(self.vocab_size, **learned["checked"]).as_mapping()
        return learned

    def by_reference(self) -> dict[str, int]:
        """How many documents the reference encoded although a fast engine was in use, per
        reason (``newer-unicode``, ``unproven-offsets``), since this object was made."""
        return dict(sorted(self._engines.by_reference.items()))

    @abstractmethod
    def _encode_reference(self, texts: list[str], offsets: bool) -> Arrays:
        """Ids (and token start offsets, with ``offsets``) from the tokenizer's own library."""


def _gigatoken_if_any(spec: str, tokenizer_json: Callable[[], str]) -> FastEngine | None:
    """gigatoken for ``auto``: ``None``, quietly, when it is missing or refuses the tokenizer."""
    try:
        _gigatoken()
    except ImportError:
        log.debug(f"{spec}: gigatoken is not installed; encoding with {REFERENCE}")
        return None
    try:
        fast = Gigatoken(tokenizer_json())
    except Exception as exc:  # gigatoken refuses a model, normalizer or split regex it lacks
        log.debug(f"{spec}: gigatoken cannot load it ({first_line(exc)}); using {REFERENCE}")
        return None
    log.debug(f"{spec}: encoding with gigatoken, checked against {REFERENCE} on first use")
    return fast


# Pre-tokenizer steps gigatoken implements. It loads others inside a Sequence (Digits,
# Punctuation) and then splits as if they were not there.
GIGATOKEN_STEPS = frozenset({"ByteLevel", "Split", "Metaspace", "Sequence"})


def _ignored_step(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """The first step of ``pre_tokenizer`` (a tokenizer.json's) that gigatoken does not
    implement, or None."""
    if pre_tokenizer is None:
        return None
    if pre_tokenizer.get("type") not in GIGATOKEN_STEPS:
        return str(pre_tokenizer.get("type"))
    steps = pre_tokenizer.get("pretokenizers", ()) if pre_tokenizer["type"] == "Sequence" else ()
    return next((found for step in steps if (found := _ignored_step(step))), None)


def _gigatoken() -> Any:
    return importlib.import_module("gigatoken")


# Per code point: -1 not looked up yet, else whether this Python's Unicode tables leave it
# unassigned. Filled as texts bring code points: most texts use a few hundred of them.
_UNASSIGNED = np.full(0x110000, -1, np.int8)


def _newer_unicode(text: str) -> bool:
    codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    codepoints = codepoints[codepoints > 0x7F]
    known = _UNASSIGNED[codepoints]
    if (known < 0).any():
        # Planes 4 to 13 hold no character in any Unicode version yet: "Cn" there too.
        for code in np.unique(codepoints[known < 0]).tolist():
            _UNASSIGNED[code] = unicodedata.category(chr(code)) == "Cn"
        known = _UNASSIGNED[codepoints]
    return bool(known.any())


def resident_bytes() -> int | None:
    """This process's resident memory, where the system says it cheaply (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def _sample_size(texts: list[str]) -> int:
    """How many of the first texts fit in CHECK_CHARS (at least one)."""
    total = 0
    for count, text in enumerate(texts):
        total += len(text)
        if total > CHECK_CHARS:
            return max(1, count)
    return len(texts)


def _first_difference(got: list[np.ndarray], expected: list[np.ndarray]) -> int | None:
    if len(got) != len(expected):
        return min(len(got), len(expected))
    return next(
        (i for i, (a, b) in enumerate(zip(got, expected)) if not np.array_equal(a, b)), None
    )
