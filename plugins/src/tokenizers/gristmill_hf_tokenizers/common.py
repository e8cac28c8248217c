"""What both tokenizer families share: lazy imports, the BOS/EOS policy, arrays out of encodings.

The BOS/EOS policy (gristmill adds special tokens itself, never the library):

- BOS is added when the tokenizer adds exactly one token before the text by default (found by
  encoding a probe text with and without ``add_special_tokens``); that token is the BOS.
- EOS is added after every document: the tokenizer's declared EOS token, else the one token it
  adds after the text by default, else the first of :data:`COMMON_EOS` in its vocabulary. A
  tokenizer with none of these gets no EOS (and a warning).
- A document that already starts with the BOS or ends with the EOS (a chat template that writes
  them) does not get a second one; the pipeline checks that.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from gristmill.errors import GristmillError, MissingDependencyError

log = logging.getLogger("gristmill")

INSTALL_HINT = "pip install 'gristmill[hf]'"
PROBE_TEXT = "Hello world"  # encoded with and without special tokens to see what the tokenizer adds
COMMON_EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>", "[EOS]")
COMMON_BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "[BOS]")
COMMON_PAD = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")


class TokenizerLoadError(GristmillError):
    """A tokenizer spec that cannot be loaded: no such folder, not on the Hub, offline, slow-only."""


class _NoTorchAdvice(logging.Filter):
    # transformers warns at import that PyTorch is missing; gristmill only tokenizes, which needs
    # no torch, so the warning would only alarm users.
    def filter(self, record: logging.LogRecord) -> bool:
        return "PyTorch was not found" not in record.getMessage()


_QUIET = _NoTorchAdvice()


def require(module: str, spec: str, why: str | None = None) -> ModuleType:
    """Import ``module`` (``transformers`` or ``tokenizers``) or say which extra installs it
    (and ``why`` the tokenizer needs it)."""
    if module == "transformers":
        logging.getLogger("transformers").addFilter(_QUIET)  # adding it twice is a no-op
    try:
        return importlib.import_module(module)
    except ImportError:
        because = f" ({why})" if why else ""
        raise MissingDependencyError(
            f"tokenizer {spec!r} needs the {module} package: {INSTALL_HINT}{because}"
        ) from None


@dataclass(frozen=True)
class Specials:
    """Special token ids and whether gristmill adds BOS/EOS to every document."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool

    def as_config(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Specials:
        def opt(key: str) -> int | None:
            return None if config.get(key) is None else int(config[key])

        return cls(
            bos_id=opt("bos_id"),
            eos_id=opt("eos_id"),
            pad_id=opt("pad_id"),
            add_bos=bool(config["add_bos"]),
            add_eos=bool(config["add_eos"]),
        )


def detect_specials(
    spec: str,
    plain: Sequence[int],
    with_specials: Sequence[int],
    vocab: Mapping[str, int],
    *,
    bos: int | None = None,
    eos: int | None = None,
    pad: int | None = None,
) -> Specials:
    """The BOS/EOS policy (see the module docstring) from a probe encoded both ways.

    ``bos``/``eos``/``pad`` are the ids the tokenizer declares, when it declares any.
    """
    prefix, suffix = _added_around(list(plain), list(with_specials))
    add_bos = len(prefix) == 1
    if add_bos:
        bos = prefix[0]
    elif prefix:
        log.warning(
            f"{spec}: the tokenizer adds {len(prefix)} tokens before the text by default; "
            "gristmill adds no BOS"
        )
    if eos is None and len(suffix) == 1:
        eos = suffix[0]
    bos = bos if bos is not None else _first_in(vocab, COMMON_BOS)
    eos = eos if eos is not None else _first_in(vocab, COMMON_EOS)
    pad = pad if pad is not None else _first_in(vocab, COMMON_PAD)
    if eos is None:
        log.warning(
            f"{spec}: the tokenizer has no EOS token (none declared, none of "
            f"{', '.join(COMMON_EOS)}): documents get no end marker"
        )
    return Specials(bos_id=bos, eos_id=eos, pad_id=pad, add_bos=add_bos, add_eos=eos is not None)


def _added_around(plain: list[int], full: list[int]) -> tuple[list[int], list[int]]:
    """The ids ``full`` has before and after ``plain`` (nothing when ``plain`` is not inside)."""
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            return full[:start], full[start + n :]
    return [], []


def _first_in(vocab: Mapping[str, int], names: Sequence[str]) -> int | None:
    return next((vocab[name] for name in names if name in vocab), None)


def to_arrays(
    ids: Sequence[Sequence[int]], offsets: Sequence[Sequence[tuple[int, int]]] | None
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The library's id lists as uint32 arrays, and each token's start character as int64."""
    arrays = [np.array(doc, dtype=np.uint32) for doc in ids]
    if offsets is None:
        return arrays, None
    # (start, end) pairs → starts; reshape keeps an empty document's shape valid.
    starts = [np.array(doc, dtype=np.int64).reshape(-1, 2)[:, 0].copy() for doc in offsets]
    return arrays, starts


@contextmanager
def not_unicode_as_value_error() -> Iterator[None]:
    """The library refuses a str it cannot encode to UTF-8 (a lone surrogate from a JSON
    ``\\ud800`` escape) with a TypeError; gristmill's pipeline expects a ValueError for a text it
    cannot tokenize, and then finds the culprit."""
    try:
        yield
    except TypeError as exc:
        raise ValueError(f"the tokenizer refused the text: {exc}") from exc


def vocab_size(vocab: Mapping[str, int], declared: int) -> int:
    """Ids run from 0 to the largest in the vocabulary (added tokens included)."""
    return max(declared, max(vocab.values(), default=-1) + 1)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def describe(spec: str, specials: Specials, name_of: Callable[[int], str | None]) -> None:
    """Log the BOS/EOS policy once, when a tokenizer is created for prepare."""

    def show(token: int | None) -> str:
        return "none" if token is None else f"{name_of(token)} (id {token})"

    log.info(
        f"{spec}: EOS {show(specials.eos_id) if specials.add_eos else 'not added'}; "
        f"BOS {show(specials.bos_id) if specials.add_bos else 'not added'}"
    )
