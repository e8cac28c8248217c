"""Token start offsets from the ids alone, for a byte-level BPE: loss masks on the fast engine.

In a byte-level BPE (GPT-2's ``ByteLevel`` pre-tokenizer) every id stands for a fixed byte string:
a vocabulary entry writes one byte per character, an added token is its content. When the
tokenizer neither adds nor changes text before the model (no prefix space, no normalizer that
changes this text), a document's tokens are its UTF-8 bytes cut in order, so each token starts
at the sum of the byte lengths before it. That holds exactly when the lengths add up to the
text's length: anything dropped (a ``Split`` that removes, an added token that strips the white
space beside it) makes them fall short, so a document whose lengths do not add up is not
described (``None``) and the caller encodes it with the reference.

Byte offsets become character offsets as the ``tokenizers`` library counts them: a token that
starts inside a multi-byte character starts at that character. A ``ByteLevel`` or ``Roberta``
post-processor with ``trim_offsets`` moves a token's start past its leading spaces (never past
its end; the first token keeps one added prefix space); that is done here too.

Tokenizers this cannot describe (SentencePiece/Metaspace, WordPiece, a normalizer that can change
the text...) get no table: :func:`offset_table` says why, and their offsets come from the
reference.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

UNKNOWN = 1 << 40  # the length of an id that stands for no fixed bytes: no document adds up
Form = Literal["NFC", "NFD", "NFKC", "NFKD"]
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD")  # a text already in the form is left as it is
SPLITTERS = ("Split", "Digits", "Punctuation")  # pre-tokenizers that cut text, never add to it
CHANGES_NOTHING = ("TemplateProcessing", "BertProcessing")  # without special tokens, no offsets
TRIMS = ("ByteLevel", "RobertaProcessing")  # post-processors that can trim offsets
# Rust's char::is_whitespace (Unicode White_Space), which trim_offsets uses; str.isspace differs.
WHITE_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _byte_alphabet() -> frozenset[str]:
    """The 256 characters GPT-2's byte-level encoding writes, one per byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return frozenset([*map(chr, printable), *(chr(256 + i) for i in range(len(others)))])


ALPHABET = _byte_alphabet()
SPACE = chr(256 + 32)  # "Ġ", the byte-level character of b" "


class Unsupported(Exception):
    """The tokenizer's ids do not stand for fixed bytes of the text (the reason)."""


@dataclass(frozen=True)
class OffsetTable:
    """Per id: the bytes of text it stands for, and what trim_offsets removes from its start."""

    lengths: np.ndarray  # int64 per id; UNKNOWN for an id that stands for no fixed bytes
    leading: np.ndarray | None  # int64 per id: leading white space, when offsets are trimmed
    keep_first_space: bool  # trimming with add_prefix_space: the first token keeps one space
    normalization: Form | None  # the normalizer's form: a text not in it is not described

    def starts(self, texts: list[str], ids: list[np.ndarray]) -> list[np.ndarray | None]:
        """Per text: its tokens' start characters (int64), or ``None`` where its ids do not
        add up to the text."""
        counts = np.fromiter(map(len, ids), np.int64, len(ids))
        flat = np.concatenate(ids) if ids else np.zeros(0, np.uint32)
        if len(flat) and int(flat.max()) >= len(self.lengths):
            return [None] * len(texts)  # an id the table does not know: nothing is described
        lengths = self.lengths[flat]
        before = np.zeros(len(flat) + 1, np.int64)
        np.cumsum(lengths, out=before[1:])
        bounds = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(counts, out=bounds[1:])
        totals = (before[bounds[1:]] - before[bounds[:-1]]).tolist()
        starts = before[:-1] - np.repeat(before[bounds[:-1]], counts)  # bytes, in each text
        ends = starts + lengths
        described = [False] * len(texts)
        for i, text in enumerate(texts):
            if text.isascii():  # one byte a character: byte offsets are character offsets
                described[i] = totals[i] == len(text)
                continue
            if self.normalization and not unicodedata.is_normalized(self.normalization, text):
                continue
            data = np.frombuffer(text.encode("utf-8"), np.uint8)
            if totals[i] != len(data):
                continue
            described[i] = True
            a, b = int(bounds[i]), int(bounds[i + 1])
            # The character each byte belongs to: count the bytes that start a character.
            char = np.cumsum((data & 0xC0) != 0x80) - 1
            starts[a:b], ends[a:b] = char[starts[a:b]], char[ends[a:b] - 1] + 1
        if self.leading is not None:
            starts = self._trim(starts, ends, flat, bounds[:-1][counts > 0])
        edges = bounds.tolist()
        return [starts[a:b] if ok else None for a, b, ok in zip(edges, edges[1:], described)]

    def _trim(
        self, starts: np.ndarray, ends: np.ndarray, flat: np.ndarray, firsts: np.ndarray
    ) -> np.ndarray:
        """trim_offsets: each start moved past the token's leading spaces, not past its end."""
        assert self.leading is not None
        leading = self.leading[flat]
        if self.keep_first_space:
            leading[firsts[leading[firsts] == 1]] = 0
        return np.minimum(starts + leading, ends)


def offset_table(tokenizer_json: str) -> OffsetTable:
    """The table of a tokenizers JSON, or :class:`Unsupported` with the reason."""
    config = json.loads(tokenizer_json)
    model = config.get("model") or {}
    if model.get("type") != "BPE":
        raise Unsupported(f"its model is {model.get('type')}, not a byte-level BPE")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise Unsupported("its BPE marks subwords with a prefix or suffix")
    if model.get("dropout"):
        raise Unsupported("its BPE has dropout")
    normalization = _normalization(config.get("normalizer"))
    _check_pre_tokenizer(config.get("pre_tokenizer"))
    trim = _trimming(config.get("post_processor"))
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {int(t["id"]): t["content"] for t in config.get("added_tokens") or ()}
    size = max([*vocab.values(), *added, -1]) + 1
    lengths = np.full(size, UNKNOWN, np.int64)
    for token, i in vocab.items():
        if token and ALPHABET.issuperset(token):  # one byte a character
            lengths[i] = len(token)
    for i, content in added.items():
        if content:
            lengths[i] = len(content.encode("utf-8"))
    leading = None
    if trim is not None:
        leading = np.zeros(size, np.int64)
        for i, token in {**{i: t for t, i in vocab.items()}, **added}.items():
            leading[i] = _leading(token)
    keep_first_space = bool(trim and trim.get("add_prefix_space"))
    return OffsetTable(lengths, leading, keep_first_space, normalization)


def _leading(token: str) -> int:
    return len(token) - len(token.lstrip("".join(WHITE_SPACE | {SPACE})))


def _normalization(normalizer: dict[str, Any] | None) -> Form | None:
    """The Unicode form the normalizer puts text in (None: it changes nothing)."""
    steps = normalizer.get("normalizers") or [] if normalizer else []
    if normalizer and normalizer.get("type") != "Sequence":
        steps = [normalizer]
    kinds = [step.get("type") for step in steps]
    if len(kinds) > 1 or any(kind not in NORMALIZERS for kind in kinds):
        raise Unsupported(f"its normalizer ({', '.join(map(str, kinds))}) can change the text")
    return cast(Form, kinds[0]) if kinds else None


def _check_pre_tokenizer(pre: dict[str, Any] | None) -> None:
    steps = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") if step else None for step in steps]
    if kinds.count("ByteLevel") != 1 or any(k not in ("ByteLevel", *SPLITTERS) for k in kinds):
        steps_named = ", ".join(map(str, kinds))
        raise Unsupported(
            f"its pre-tokenizer ({steps_named}) is not one ByteLevel step with splits around it"
        )
    if next(s for s in steps if s and s["type"] == "ByteLevel").get("add_prefix_space"):
        raise Unsupported("its byte-level pre-tokenizer adds a prefix space")


def _trimming(post: dict[str, Any] | None) -> dict[str, Any] | None:
    """The post-processor step that trims offsets (``None``: none does)."""
    steps = (post.get("processors") or []) if post and post.get("type") == "Sequence" else [post]
    trims = []
    for step in steps:
        kind = step.get("type") if step else None
        if kind in TRIMS and step and step.get("trim_offsets"):
            trims.append(step)
        elif step and kind not in (*TRIMS, *CHANGES_NOTHING):
            raise Unsupported(f"its {kind} post-processor may change offsets")
    if len(trims) > 1:
        raise Unsupported("it trims offsets twice")
    return trims[0] if trims else None
