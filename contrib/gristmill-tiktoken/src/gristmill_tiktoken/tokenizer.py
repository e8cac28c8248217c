"""The ``tiktoken:`` tokenizer: a tiktoken BPE behind gristmill's Tokenizer protocol.

Where the vocabulary comes from (see :func:`from_spec`): a named tiktoken encoding, a ranks file,
or a settings file (JSON) naming a ranks file with its split pattern and special tokens. Whatever
the source, the tokenizer is built from the same parts (ranks, pattern, special tokens), and
``save`` writes those parts into the dataset, so a prepared dataset reloads without the network
and without the original files.

Text is always encoded as ordinary text: ``<|endoftext|>`` written in a document is seven
ordinary tokens, never the special token. gristmill adds the EOS (and a BOS, when one is set)
itself.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gristmill.errors import MissingDependencyError, first_line
from gristmill_tiktoken.ranks import (
    MAX_ID,
    TiktokenLoadError,
    check_ranks,
    dump_ranks,
    parse_ranks,
    read_ranks,
    sha256,
)

log = logging.getLogger("gristmill")

PREFIX = "tiktoken:"
SETTINGS_FILE = "tiktoken.json"  # what save writes, and what a settings spec points at
RANKS_FILE = "ranks.tiktoken"
ENDOFTEXT = "<|endoftext|>"
# The split pattern of GPT-2 (as OpenAI published it): contractions, letters, digits, other
# symbols, each with an optional leading space, and runs of whitespace. It matches every
# character, so no text is lost between the pieces.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Settings a settings file may hold and the factory takes as keyword options.
OPTIONS = ("pattern", "special_tokens", "bos", "eos", "pad")
SETTINGS_KEYS = ("ranks", "name", "sha256", *OPTIONS)


@dataclass(frozen=True)
class Vocabulary:
    """Everything that decides the ids: tiktoken's three parts, plus which specials gristmill adds."""

    name: str
    ranks: Mapping[bytes, int]
    pattern: str
    special_tokens: Mapping[str, int]
    bos: str | None = None  # names of special tokens; a set BOS (EOS) is added to every document
    eos: str | None = None
    pad: str | None = None


class TiktokenTokenizer:
    """A tiktoken ``Encoding`` built from a :class:`Vocabulary`."""

    def __init__(self, spec: str, vocab: Vocabulary):
        tiktoken = _require(spec)
        self.spec, self.vocab = spec, vocab
        try:
            self.encoding = tiktoken.Encoding(
                vocab.name,
                pat_str=vocab.pattern,
                mergeable_ranks=dict(vocab.ranks),
                special_tokens=dict(vocab.special_tokens),
            )
        except ValueError as exc:  # the split pattern does not compile
            raise TiktokenLoadError(f"{spec!r}: the split pattern is not usable: {exc}") from None
        specials = vocab.special_tokens
        self.vocab_size = max(max(vocab.ranks.values()), *specials.values(), -1) + 1
        self.bos_id = None if vocab.bos is None else specials[vocab.bos]
        self.eos_id = None if vocab.eos is None else specials[vocab.eos]
        self.pad_id = None if vocab.pad is None else specials[vocab.pad]
        self.add_bos, self.add_eos = vocab.bos is not None, vocab.eos is not None
        # Bytes per token id, for character offsets and to check that no text was dropped.
        self._nbytes = np.zeros(self.vocab_size, np.int64)
        ids = np.fromiter(vocab.ranks.values(), np.int64, len(vocab.ranks))
        self._nbytes[ids] = np.fromiter(map(len, vocab.ranks), np.int64, len(vocab.ranks))

    # --- creating and reloading ------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> TiktokenTokenizer:
        """The tokenizer ``spec`` names:

        - ``tiktoken:NAME``: a tiktoken encoding (``o200k_base``, ``cl100k_base``…), downloaded
          by tiktoken the first time and cached (``TIKTOKEN_CACHE_DIR``);
        - ``tiktoken:PATH.tiktoken``: a ranks file, split with the GPT-2 pattern, with
          ``<|endoftext|>`` as the EOS at the id after the last rank;
        - ``tiktoken:PATH.json``: a settings file: ``ranks`` (the ranks file, relative to the
          settings file) and any of ``pattern``, ``special_tokens``, ``bos``, ``eos``, ``pad``.

        Keyword options with those five names override the settings; others (``engine``…) are
        ignored.
        """
        target = spec.removeprefix(PREFIX)
        if not target:
            raise TiktokenLoadError(
                f"{spec!r}: name an encoding or a file: tiktoken:o200k_base, "
                "tiktoken:PATH.tiktoken or tiktoken:PATH.json"
            )
        given = {key: options[key] for key in OPTIONS if key in options}
        path = Path(target).expanduser()
        if target.endswith(".json"):
            vocab = _from_settings_file(spec, path, given)
        elif target.endswith(".tiktoken") or os.sep in target or "/" in target or path.exists():
            name = path.name.removesuffix(".tiktoken") or "ranks"
            vocab = _vocabulary(spec, name, read_ranks(path, spec), {}, given)
        else:
            vocab = _from_named(spec, target, given)
        tok = cls(spec, vocab)
        tok._describe()
        return tok

    @classmethod
    def load(cls, directory: Path, config: Mapping[str, Any], **options: Any) -> TiktokenTokenizer:
        """The copy ``save`` wrote into ``directory``; needs no network."""
        path = Path(directory) / config.get("file", SETTINGS_FILE)
        return cls(f"{PREFIX}{path}", _from_settings_file(f"{PREFIX}{path}", path, {}))

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the ranks and a settings file naming them: ``tiktoken:DIR/tiktoken.json`` is a
        spec for the same tokenizer."""
        (Path(directory) / RANKS_FILE).write_bytes(self._ranks_file)
        settings = {
            "name": self.vocab.name,
            "ranks": RANKS_FILE,
            "sha256": sha256(self._ranks_file),
            "pattern": self.vocab.pattern,
            "special_tokens": dict(self.vocab.special_tokens),
            "bos": self.vocab.bos,
            "eos": self.vocab.eos,
            "pad": self.vocab.pad,
        }
        text = json.dumps(settings, indent=2, ensure_ascii=False) + "\n"
        (Path(directory) / SETTINGS_FILE).write_text(text, encoding="utf-8")
        return {"file": SETTINGS_FILE}

    # --- the protocol ------------------------------------------------------------------------------

    def encode_batch(
        self, texts: Sequence[str], *, offsets: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Ids per text (uint32) and, with ``offsets``, the character where each token starts.

        Encodes on the calling thread: gristmill's worker processes are the parallelism.
        """
        ids, starts = [], []
        for text in texts:
            doc, nbytes = self._encode(text)
            ids.append(doc)
            if offsets:
                starts.append(self._starts(text, doc, nbytes))
        return ids, starts if offsets else None

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        # tiktoken replaces a lone surrogate (from a JSON "\ud800" escape) by U+FFFD without a
        # word, which would store a text other than the record's. Encoding to UTF-8 first raises
        # a UnicodeEncodeError (a ValueError), and gristmill then rejects that record alone.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        doc = self.encoding.encode_to_numpy(text, disallowed_special=()).copy()
        nbytes = self._nbytes[doc]
        if int(nbytes.sum()) != size:
            # A pattern that does not match every character drops the characters between its
            # matches: refuse rather than store a text with holes.
            raise ValueError(
                f"{self.spec}: the split pattern does not match every character of the text "
                f"({size - int(nbytes.sum())} of {size} bytes would be lost); use a pattern that "
                "matches everything, such as one ending in |\\s+|."
            )
        return doc, nbytes

    @staticmethod
    def _starts(text: str, doc: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """The character each token starts in. A token that starts inside a character (its
        first byte continues a character an earlier token began) starts in that character."""
        byte_starts = np.cumsum(nbytes) - nbytes
        if text.isascii():
            return byte_starts
        codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        width = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
        char_of_byte = np.repeat(np.arange(len(codepoints), dtype=np.int64), width)
        return char_of_byte[byte_starts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the ids; special tokens as their names, an unknown id as ``<|unknown:N|>``."""
        tokens = np.asarray(ids, dtype=np.int64).tolist()
        try:
            data = self.encoding.decode_bytes(tokens)
        except (KeyError, ValueError, OverflowError):  # an id outside the vocabulary
            parts = []
            for token in tokens:
                try:
                    parts.append(self.encoding.decode_single_token_bytes(token))
                except (KeyError, ValueError, OverflowError):
                    parts.append(f"<|unknown:{token}|>".encode())
            data = b"".join(parts)
        return data.decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """Changes whenever the ids or the added specials could (the name does not count)."""
        parts = {
            "ranks": sha256(self._ranks_file),
            "pattern": self.vocab.pattern,
            "special_tokens": sorted(self.vocab.special_tokens.items()),
            "bos": self.vocab.bos,
            "eos": self.vocab.eos,
            "pad": self.vocab.pad,
        }
        return sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8"))

    @cached_property
    def _ranks_file(self) -> bytes:
        return dump_ranks(self.vocab.ranks)

    def _describe(self) -> None:
        def show(name: str | None, token: int | None, added: bool) -> str:
            return f"{name} (id {token})" if added else "not added"

        log.info(
            f"{self.spec}: EOS {show(self.vocab.eos, self.eos_id, self.add_eos)}; "
            f"BOS {show(self.vocab.bos, self.bos_id, self.add_bos)}"
        )
        if not self.add_eos:
            log.warning(f"{self.spec}: no EOS token is set: documents get no end marker")


# --- where a vocabulary comes from ---------------------------------------------------------------


def _require(spec: str) -> ModuleType:
    try:
        return importlib.import_module("tiktoken")
    except ImportError:
        raise MissingDependencyError(
            f"tokenizer {spec!r} needs the tiktoken package: pip install gristmill-tiktoken"
        ) from None


def _vocabulary(
    spec: str,
    name: str,
    ranks: Mapping[bytes, int],
    defaults: Mapping[str, Any],
    given: Mapping[str, Any],
) -> Vocabulary:
    """The vocabulary from ranks, the source's own settings and the caller's, checked.

    Without ``special_tokens``: ``<|endoftext|>`` at the id after the last rank. Without
    ``eos``: ``<|endoftext|>`` when it is a special token. Without ``bos``/``pad``: none.
    """
    settings = {**defaults, **given}
    if "special_tokens" in settings:
        specials = settings["special_tokens"]
    else:
        specials = {ENDOFTEXT: max(ranks.values()) + 1}
    if not isinstance(specials, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in specials.items()
    ):
        raise TiktokenLoadError(
            f"{spec!r}: special_tokens must map token names to ids, got {specials!r}"
        )
    ranked = set(ranks.values())
    for token, token_id in specials.items():
        if not 0 <= token_id <= MAX_ID or token_id in ranked:
            raise TiktokenLoadError(
                f"{spec!r}: the special token {token} has id {token_id}, which "
                + ("a ranked token already has" if token_id in ranked else "is out of range")
            )
    if len(set(specials.values())) != len(specials):
        raise TiktokenLoadError(f"{spec!r}: two special tokens share an id: {dict(specials)}")
    pattern = settings.get("pattern", GPT2_PATTERN)
    if not isinstance(pattern, str) or not pattern:
        raise TiktokenLoadError(f"{spec!r}: pattern must be a regular expression, got {pattern!r}")
    roles = {}
    for role in ("bos", "eos", "pad"):
        default = ENDOFTEXT if role == "eos" and ENDOFTEXT in specials else None
        token = settings.get(role, default)
        if token is not None and token not in specials:
            known = ", ".join(specials) or "none"
            raise TiktokenLoadError(
                f"{spec!r}: {role} {token!r} is not a special token (they are: {known})"
            )
        roles[role] = token
    return Vocabulary(name, dict(ranks), pattern, dict(specials), **roles)


def _from_settings_file(spec: str, path: Path, given: Mapping[str, Any]) -> Vocabulary:
    """A settings file (JSON): ``ranks`` and the settings of :data:`SETTINGS_KEYS`."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TiktokenLoadError(f"{spec!r}: no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TiktokenLoadError(f"{spec!r}: cannot read {path} as JSON: {exc}") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("ranks"), str):
        raise TiktokenLoadError(
            f'{path}: a settings file is a JSON object with "ranks": the path of a ranks file'
        )
    unknown = sorted(set(settings) - set(SETTINGS_KEYS))
    if unknown:  # a misspelt setting must not silently give other ids
        raise TiktokenLoadError(
            f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(SETTINGS_KEYS)}"
        )
    ranks_path = path.parent / Path(settings["ranks"]).expanduser()
    try:
        data = ranks_path.read_bytes()
    except OSError:
        ranks = read_ranks(ranks_path, spec)  # raises the error that names the file
    else:
        if settings.get("sha256") not in (None, sha256(data)):
            raise TiktokenLoadError(
                f"{ranks_path}: the ranks file changed since {path} was written (its SHA-256 "
                "differs); restore it, or remove the sha256 entry if the change is meant"
            )
        ranks = parse_ranks(data, str(ranks_path))
    name = settings.get("name") or ranks_path.name.removesuffix(".tiktoken")
    defaults = {key: settings[key] for key in OPTIONS if key in settings}
    return _vocabulary(spec, str(name), ranks, defaults, given)


def _from_named(spec: str, name: str, given: Mapping[str, Any]) -> Vocabulary:
    """A named tiktoken encoding (tiktoken downloads it the first time, then reads its cache)."""
    tiktoken = _require(spec)
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise TiktokenLoadError(
            f"{spec!r}: tiktoken has no encoding named {name!r} (it has: {', '.join(known)}); "
            "for a ranks file of your own pass tiktoken:PATH.tiktoken"
        )
    try:
        encoding = tiktoken.get_encoding(name)
    except (OSError, ImportError) as exc:  # requests' errors are OSErrors; blobfile for gs://…
        raise TiktokenLoadError(_offline_message(spec, name, exc)) from None
    except ValueError as exc:  # tiktoken checks a download against its SHA-256
        raise TiktokenLoadError(f"{spec!r}: {first_line(exc)}") from None
    try:
        # tiktoken keeps the parts an Encoding is built from in private attributes (its pickling
        # reads them too) and offers no public accessor; the tokenizer is rebuilt from them so
        # that it can be saved and reloaded without tiktoken's registry or the network.
        ranks = encoding._mergeable_ranks
        defaults = {"pattern": encoding._pat_str, "special_tokens": encoding._special_tokens}
    except AttributeError:
        raise TiktokenLoadError(
            f"{spec!r}: this tiktoken version ({getattr(tiktoken, '__version__', '?')}) does not "
            "expose the parts of an encoding; save the ranks to a .tiktoken file and pass "
            "tiktoken:PATH.tiktoken"
        ) from None
    check_ranks(ranks, spec)
    return _vocabulary(spec, name, ranks, defaults, given)


def _offline_message(spec: str, name: str, exc: BaseException) -> str:
    # Where tiktoken looks for its cached downloads (tiktoken.load.read_file_cached).
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache = cache or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return (
        f"{spec!r}: tiktoken cannot download the {name} encoding ({first_line(exc)}) and has no "
        f"copy in its cache ({cache}). Where there is network, fill a cache folder "
        f"(TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('{name}')\") "
        "and set TIKTOKEN_CACHE_DIR=DIR here; or reuse the copy that a dataset prepared with "
        f"{spec} saved: --tokenizer tiktoken:DATASET/tokenizer/{SETTINGS_FILE}"
    )
