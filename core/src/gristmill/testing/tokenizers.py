"""Tokenizers: ids below ``vocab_size`` with offsets into the text; the same ids for a text alone
or in any batch; a saved and reloaded copy (what prepare's workers encode with) that gives the
same ids; every engine the family offers giving the same ids."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from gristmill.plugin.components import HasFingerprint, RendersChat, TokenizerType
from gristmill.testing.data import TEXTS
from gristmill.testing.kit import Check, Context, given

CHAT = (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Bye"))


def checks(record: TokenizerType) -> dict[str, Check]:
    found: dict[str, Check] = {
        "encode": check_encode,
        "batch": check_batch,
        "save-load": check_save_load,
    }
    if record.engines:
        found["engines"] = check_engines
    return found


def _spec(record: TokenizerType, context: Context) -> str:
    chosen = context.inputs.tokenizers.get(record.name)
    if chosen is None and not record.prefixes and not record.suffixes:
        return record.name  # claimed by its name alone
    if chosen is None:
        pytest.skip(
            f"tokenizer {record.name!r} needs a spec ({', '.join(record.prefixes + record.suffixes)}"
            f"): pass tokenizers={{{record.name!r}: spec}} to conformance()"
        )
    chosen = given(chosen, f"tokenizer {record.name!r}")
    if callable(chosen):
        return context.once(f"tokenizer:{record.name}", chosen)
    return chosen


def _made(record: TokenizerType, context: Context, engine: str = "auto") -> Any:
    return record.factory(_spec(record, context), engine=engine)


def _encoded(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    ids, offsets = tokenizer.encode_batch(texts, offsets=True)
    assert len(ids) == len(offsets) == len(texts), "one array of ids and offsets per text"
    return [(a.tolist(), o.tolist()) for a, o in zip(ids, offsets)]


def check_encode(record: TokenizerType, context: Context) -> None:
    tokenizer = _made(record, context)
    vocab = tokenizer.vocab_size
    assert isinstance(vocab, int) and vocab > 0, f"vocab_size is {vocab!r}"
    for name in ("bos_id", "eos_id", "pad_id"):
        special = getattr(tokenizer, name)
        assert special is None or 0 <= special < vocab, f"{name} {special!r} not in the vocabulary"
    for name in ("add_bos", "add_eos"):
        wanted = getattr(tokenizer, name)
        assert isinstance(wanted, bool), f"{name} is {wanted!r}"
        assert not wanted or getattr(tokenizer, name.replace("add_", "") + "_id") is not None
    ids, offsets = tokenizer.encode_batch(TEXTS, offsets=True)
    for text, array, starts in zip(TEXTS, ids, offsets):
        assert array.ndim == 1 and array.dtype.kind in "iu", f"{text!r}: ids {array.dtype}"
        assert len(starts) == len(array), f"{text!r}: {len(starts)} offsets, {len(array)} ids"
        if len(array):
            assert array.min() >= 0 and array.max() < vocab, f"{text!r}: an id past vocab_size"
            assert starts.min() >= 0 and starts.max() <= len(text), f"{text!r}: offsets {starts}"
            assert (np.diff(starts) >= 0).all(), f"{text!r}: offsets go back"
        assert isinstance(tokenizer.decode(array), str)
    _check_chat(tokenizer)


def _check_chat(tokenizer: Any) -> None:
    if not isinstance(tokenizer, RendersChat):
        return
    for train_on_prompt in (False, True):
        text, spans = tokenizer.render_chat(CHAT, train_on_prompt=train_on_prompt)
        ends = [0, *(x for span in spans for x in span), len(text)]
        assert ends == sorted(ends), f"render_chat spans {spans} not sorted, disjoint, in the text"
        assert spans, "render_chat gave no loss span for a conversation with an assistant turn"


def check_batch(record: TokenizerType, context: Context) -> None:
    tokenizer = _made(record, context)
    together = _encoded(tokenizer, TEXTS)
    alone = [_encoded(tokenizer, [text])[0] for text in TEXTS]
    assert together == alone, "a text's ids depend on the batch it is encoded in"
    backwards = _encoded(tokenizer, TEXTS[::-1])[::-1]
    assert backwards == together, "a text's ids depend on its place in the batch"


def check_save_load(record: TokenizerType, context: Context) -> None:
    tokenizer = _made(record, context)
    folder = context.folder()
    config = tokenizer.save(folder)
    stored = json.loads(json.dumps(config))  # the manifest holds it as JSON
    assert stored == config, f"save() returned a config that JSON changes: {config!r}"
    loaded = record.load(folder, stored, engine="auto")
    for name in ("vocab_size", "bos_id", "eos_id", "pad_id", "add_bos", "add_eos"):
        assert getattr(loaded, name) == getattr(tokenizer, name), f"{name} changed on reload"
    assert _encoded(loaded, TEXTS) == _encoded(tokenizer, TEXTS), "the reloaded copy's ids differ"
    if isinstance(tokenizer, HasFingerprint):
        assert isinstance(loaded, HasFingerprint), "the reloaded copy has no fingerprint()"
        assert loaded.fingerprint() == tokenizer.fingerprint(), "the fingerprint changed on reload"


def check_engines(record: TokenizerType, context: Context) -> None:
    reference = _encoded(_made(record, context), TEXTS)
    for engine in record.engines:
        assert _encoded(_made(record, context, engine), TEXTS) == reference, f"engine {engine!r}"
