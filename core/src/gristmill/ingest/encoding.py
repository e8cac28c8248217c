"""From examples to token documents: rendering, tokenizing in batches, loss masks, specials;
examples that already hold token ids are checked against the vocabulary and kept as they are.

Also each document's identity (its digest), from its content alone, so that it does not depend
on how the input was cut into chunks (:mod:`gristmill.ingest.splits` chooses a split by it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from gristmill.errors import DataError
from gristmill.ingest.policy import ErrorPolicy
from gristmill.plugin.components import Rejected, RendersChat, Tokenizer, Where
from gristmill.plugin.examples import Example, loss_mask

Encoded = tuple[np.ndarray, np.ndarray | None, bool]  # ids, loss mask (None: all), truncated
BATCH = 512  # examples per tokenizer call: large enough for batch APIs, small enough to stream
# ...and at most about this many characters: a batch of long documents is held in memory several
# times over (texts, ids, ids with specials), and the engines gain nothing from more. It is more
# than the fast engine's first check (engines.CHECK_CHARS): that checks the same texts.
BATCH_CHARS = 1 << 20
Batch = tuple[list[np.ndarray], list[np.ndarray | None], list[Any], int]


def encoded_batches(
    examples: Iterator[tuple[Example, Where]],
    tok: Tokenizer,
    policy: ErrorPolicy,
    *,
    train_on_prompt: bool,
    max_doc_tokens: int | None,
) -> Iterator[Batch]:
    """Batches of tokenized documents: ids, masks, metadata per document, and how many were cut.

    Examples the tokenizer cannot take (a chat template refusing a conversation…) go to
    ``policy``. The examples come normalised or not (see :mod:`gristmill.ingest.chain`).
    """
    for batch in _batches(examples):
        ids, masks, metadata, cut = [], [], [], 0
        for (example, _), result in zip(batch, encode(tok, batch, train_on_prompt, max_doc_tokens)):
            if isinstance(result, Rejected):
                policy.reject(result)
                continue
            doc, mask, was_cut = result
            cut += was_cut
            ids.append(doc)
            masks.append(mask)
            metadata.append(example.metadata or None)
        yield ids, masks, metadata, cut


def _batches(examples: Iterator[tuple[Example, Where]]) -> Iterator[list[tuple[Example, Where]]]:
    """The examples in runs of at most BATCH, ending early once they hold BATCH_CHARS."""
    batch: list[tuple[Example, Where]] = []
    chars = 0
    for item in examples:
        batch.append(item)
        chars += _chars(item[0])
        if len(batch) == BATCH or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _chars(example: Example) -> int:
    """About how many characters an example puts in a batch (its text, or its parts)."""
    if example.text is not None:
        return len(example.text)
    parts = (example.prompt, example.completion, example.system)
    return sum(len(part) for part in parts if part) + sum(
        len(content) for _, content in example.messages or ()
    )


def encode(
    tok: Tokenizer,
    batch: list[tuple[Example, Where]],
    train_on_prompt: bool,
    max_doc_tokens: int | None = None,
) -> list[Encoded | Rejected]:
    """Per example: token ids, loss mask and whether it was truncated; or why not."""
    chat = tok if isinstance(tok, RendersChat) else None  # asked once: isinstance is slow
    prepared = [
        _render(chat, example, where, train_on_prompt)
        if example.input_ids is None
        else _stored(tok, example, where, train_on_prompt, max_doc_tokens)
        for example, where in batch
    ]
    rendered = [r for r in prepared if isinstance(r, Rendered)]
    encoded = iter(_encode_rendered(tok, rendered, max_doc_tokens))
    return [next(encoded) if isinstance(r, Rendered) else r for r in prepared]


class Rendered(NamedTuple):
    """An example as the text to tokenize, with the character spans that carry loss."""

    text: str
    spans: tuple[tuple[int, int], ...]
    where: Where


def _render(
    chat: RendersChat | None, example: Example, where: Where, train_on_prompt: bool
) -> Rendered | Rejected:
    """The text to tokenize and its loss spans: chat through the tokenizer's own template when
    it has one (``chat``), else the built-in templates of :meth:`Example.render`."""
    if example.messages is None or chat is None:
        return Rendered(*example.render(train_on_prompt=train_on_prompt), where)
    try:
        return Rendered(*chat.render_chat(example.messages, train_on_prompt=train_on_prompt), where)
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
    except DataError as exc:  # a tokenizer that takes no text at all (``ids``): no record could
        raise DataError(
            exc.reason, where=exc.where or str(items[0].where), field=exc.field
        ) from None
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
        if len(doc) and (
            (doc.dtype.kind != "u" and int(doc.min()) < 0) or int(doc.max()) >= tok.vocab_size
        ):
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


def _stored(
    tok: Tokenizer, example: Example, where: Where, train_on_prompt: bool, limit: int | None
) -> Encoded | Rejected:
    """A document of the token ids an example holds, as they are: no special token is added
    (the ids are the document the record's maker meant). Each id must lie inside the
    vocabulary; ``train_on_prompt`` puts loss on every token, and ``limit`` truncates, as for
    text."""
    doc = np.asarray(example.input_ids, dtype=np.int64)
    past = np.flatnonzero(doc >= tok.vocab_size)
    if len(past):
        i = int(past[0])
        message = (
            f"input_ids[{i}] is {doc[i]}, outside the tokenizer's vocabulary of "
            f"{tok.vocab_size:,} ids (0 to {tok.vocab_size - 1:,}): give the tokenizer that "
            "made these ids (--tokenizer), or ids below its vocabulary size"
        )
        return Rejected("bad-token-id:input_ids", message, where, _record(example), "input_ids")
    mask = None
    if example.loss_mask is not None and not train_on_prompt:
        mask = np.asarray(example.loss_mask, dtype=np.uint8)
        if not mask.any():
            message = "no token carries loss (its labels are all -100, or its loss_mask all 0)"
            return Rejected("no-loss", message, where, _record(example))
    cut = limit is not None and len(doc) > limit
    if cut:
        doc, mask = _truncate(tok, doc, mask, limit)  # type: ignore[arg-type]
        if mask is not None and not mask.any():
            message = f"no token carries loss within the first {limit:,} tokens"
            return Rejected("no-loss", message, where, _record(example))
    return doc, mask, cut


def _record(example: Example) -> str:
    """An example of token ids as JSON, for the reject file."""
    return json.dumps(example.as_record(), ensure_ascii=False)


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
    size = len(doc)
    add_bos = int(bool(tok.add_bos and bos is not None and not (size and doc[0] == bos)))
    add_eos = int(bool(tok.add_eos and eos is not None and not (size and doc[-1] == eos)))
    if not add_bos and not add_eos:
        return doc, mask
    # One array of the final length, filled in place: a document is often megabytes of ids.
    out = np.empty(add_bos + size + add_eos, doc.dtype)
    out[add_bos : add_bos + size] = doc
    if add_bos:
        out[0] = bos
    if add_eos:
        out[-1] = eos
    if mask is not None:
        end = mask[-1] if len(mask) else 1
        mask = np.concatenate([np.zeros(add_bos, np.uint8), mask, np.full(add_eos, end, np.uint8)])
    return out, mask


def digest(ids: np.ndarray, mask: np.ndarray | None) -> bytes:
    """A document's identity: its tokens and loss mask (for --dedup and the split).

    Hashed as little-endian uint32 ids and uint8 mask values, whatever array types the tokenizer
    (or its engine) returned, so that the same document has one identity.
    """
    digest = hashlib.blake2b(np.asarray(ids, dtype="<u4").tobytes(), digest_size=16)
    if mask is not None:
        digest.update(np.asarray(mask, dtype=np.uint8).tobytes())
    return digest.digest()
