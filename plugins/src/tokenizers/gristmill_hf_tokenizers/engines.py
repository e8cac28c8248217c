"""Encoding engines: the tokenizer's own library (``hf``, the reference) or gigatoken, a faster one.

Both ``hf:`` and ``tokenizer.json`` tokenizers encode through an :class:`EngineSwitch`:

- ``hf`` is the library the tokenizer was written for (``tokenizers``, through ``transformers`` for
  ``hf:``); its ids and offsets are, by definition, right.
- ``gigatoken`` re-implements byte-level BPE (and SentencePiece-style BPE with byte fallback) in
  Rust, much faster (docs/benchmarks.md). It gives no character offsets, so a batch that needs them (loss
  masks) is encoded by ``hf``.
- ``auto`` (the default) is gigatoken when it is installed and loads the tokenizer, else hf.

A fast engine is trusted only after it agrees with ``hf``: its first batch is also encoded by
``hf`` and compared id for id. On a difference, or when it raises on a text that ``hf`` encodes,
it is dropped for the rest of the tokenizer object's life with a warning, and ``hf`` carries on.
The engine never changes a tokenizer's fingerprint or saved config: the ids are the same.
"""

from __future__ import annotations

import functools
import importlib
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, Protocol

import numpy as np

from gristmill.errors import GristmillError, MissingDependencyError, first_line
from gristmill_hf_tokenizers.common import Specials, log

AUTO = "auto"
REFERENCE = "hf"
ENGINES = (REFERENCE, "gigatoken")  # what factory/load accept besides "auto"
CHECK_CHARS = 1 << 18  # text compared with the reference on first use (256 Ki characters)
GIGATOKEN_HINT = "pip install gigatoken (or pip install 'gristmill[hf]')"

Arrays = tuple[list[np.ndarray], list[np.ndarray] | None]  # ids, and token start offsets
Reference = Callable[[list[str], bool], Arrays]  # (texts, offsets): the hf engine


class EngineError(GristmillError):
    """An engine that was asked for by name cannot encode this tokenizer."""


class FastEngine(Protocol):
    """An engine besides the reference: ids only, one uint32 array per text."""

    name: str

    def encode(self, texts: list[str]) -> list[np.ndarray]: ...


class Gigatoken:
    """gigatoken, built from the tokenizer's JSON; encodes on the calling thread.

    gristmill parallelises with worker processes (one per core), so gigatoken's own thread pool
    is never used (``parallel=False``): no oversubscription, and no pool inherited across a fork.
    """

    name = "gigatoken"

    def __init__(self, tokenizer_json: str):
        self._json = tokenizer_json
        self._tok = _gigatoken().Tokenizer.from_json(tokenizer_json)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        # One flat uint32 buffer and row offsets (an awkward array): no Python int per token.
        layout = self._tok.encode_batch(texts, parallel=False).layout.to_ListOffsetArray64(True)
        flat = np.asarray(layout.content.data, dtype=np.uint32)
        bounds = np.asarray(layout.offsets).tolist()
        return [flat[start:end] for start, end in pairwise(bounds)]

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
    ):
        self.spec = spec
        self._fast = fast
        # auto: the fast engine is made on first use, so that a tokenizer that never encodes
        # (prepare's main process: its workers encode) never pays for loading it.
        self._build = build
        self.checked = False  # the fast engine has matched the reference on a whole batch

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

    def encode_batch(self, texts: Sequence[str], offsets: bool, reference: Reference) -> Arrays:
        texts = list(texts)
        # Offsets (for loss masks) come from the reference: no fast engine gives them exactly.
        if self.fast is None or offsets or not texts:
            return reference(texts, offsets)
        # A character that this Python's Unicode tables do not know was assigned by a newer
        # Unicode version: one engine's split regex may count it a letter and the other not
        # (gigatoken 0.10 knows U+A7CF as a letter, hf does not), so its text goes to the
        # reference. Such texts are rare; ASCII ones are never checked.
        newer = [i for i, text in enumerate(texts) if not text.isascii() and _newer_unicode(text)]
        if not newer:
            return self._encode_fast(texts, reference), None
        chosen = set(newer)
        rest = [i for i in range(len(texts)) if i not in chosen]
        ids: list[np.ndarray] = [np.zeros(0, np.uint32)] * len(texts)
        for i, doc in zip(newer, reference([texts[i] for i in newer], False)[0]):
            ids[i] = doc
        for i, doc in zip(
            rest, self._encode_fast([texts[i] for i in rest], reference) if rest else []
        ):
            ids[i] = doc
        return ids, None

    def _encode_fast(self, texts: list[str], reference: Reference) -> list[np.ndarray]:
        """Ids from the fast engine, checked on first use; the reference's once it failed."""
        fast = self.fast
        if fast is None:
            return reference(texts, False)[0]
        try:
            ids = fast.encode(texts)
        except Exception as exc:
            # A text that hf refuses too (a lone surrogate) is the data's fault: hf raises it
            # here and the fast engine stays. Otherwise the fast engine is what failed.
            expected = reference(texts, False)[0]
            problem = f"failed on this batch ({first_line(exc)})"
            self._fall_back(problem)
            return expected
        if not self.checked:
            # The first texts of the batch, up to CHECK_CHARS: the reference is slow, and a
            # batch of long documents would otherwise cost as much as encoding it all with hf.
            sample = texts[: _sample_size(texts)]
            expected = reference(sample, False)[0]
            differs = _first_difference(ids[: len(sample)], expected)
            if differs is not None:
                self._fall_back(
                    f"gives other ids than {REFERENCE} for the text at index {differs} of its "
                    "first batch"
                )
                return reference(texts, False)[0]
            # Empty texts prove nothing: check again on the next batch.
            self.checked = any(len(doc) for doc in expected)
        return ids

    def _fall_back(self, problem: str) -> None:
        assert self.fast is not None
        log.warning(
            f"{self.spec}: the {self.fast.name} engine {problem}; encoding with {REFERENCE} "
            f"from now on (--engine {REFERENCE} skips {self.fast.name})"
        )
        self.fast = None


def choose(spec: str, engine: str, tokenizer_json: Callable[[], str]) -> EngineSwitch:
    """The engine for ``engine`` (``auto``, ``hf`` or ``gigatoken``).

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
        return EngineSwitch(
            spec, None, build=functools.partial(_gigatoken_if_any, spec, tokenizer_json)
        )
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
    return EngineSwitch(spec, fast)


class EngineTokenizer(ABC):
    """What the ``hf:`` and ``tokenizer.json`` tokenizers share: the special tokens, and the
    engine that encodes (see the module docstring), with the subclass's own library as the
    reference (``_encode_reference``)."""

    def __init__(
        self,
        spec: str,
        specials: Specials,
        vocab_size: int,
        engine: str,
        tokenizer_json: Callable[[], str],
    ):
        self.spec = spec
        self.specials = specials
        self.bos_id, self.eos_id, self.pad_id = specials.bos_id, specials.eos_id, specials.pad_id
        self.add_bos, self.add_eos = specials.add_bos, specials.add_eos
        self.vocab_size = vocab_size
        self._engines = choose(spec, engine, tokenizer_json)

    @property
    def engine(self) -> str:
        """The engine encoding now: ``gigatoken`` or ``hf`` (also after a fallback)."""
        return self._engines.name

    def encode_batch(
        self, texts: Sequence[str], *, offsets: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        return self._engines.encode_batch(texts, offsets, self._encode_reference)

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


def _gigatoken() -> Any:
    return importlib.import_module("gigatoken")


@functools.cache
def _unassigned() -> np.ndarray:
    """Per code point: unassigned in this Python's Unicode tables (built once, on first use).

    Planes 4 to 13 hold no character in any Unicode version yet: they are not looked up.
    """
    table = np.ones(0x110000, bool)
    for first, end in ((0, 0x40000), (0xE0000, 0x110000)):
        table[first:end] = np.fromiter(
            (unicodedata.category(chr(c)) == "Cn" for c in range(first, end)), bool, end - first
        )
    return table


def _newer_unicode(text: str) -> bool:
    codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    return bool(_unassigned()[codepoints].any())


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
