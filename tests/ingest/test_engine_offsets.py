"""Loss masks on the fast engine: gigatoken's ids give the token offsets of a byte-level BPE, and
those are exactly the reference's (``hf``), or the reference gives them.

Every tokenizer here is a byte-level BPE trained by the tests on standard-library text, varied
the ways real ones are (GPT-2's and RoBERTa's post-processors, Llama 3's split, an NFC
normalizer, a chat template), so nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import pickle
import types
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.plugin.examples import loss_mask
from gristmill.plugin.manager import get_manager
from gristmill_sample import StdlibQASource, stdlib_modules
from tests.helpers import examples, train_bpe, tree_bytes

pytest.importorskip("gigatoken")
tokenizers = pytest.importorskip("tokenizers")
from gristmill_hf_tokenizers.offsets import Unsupported, offset_table  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<s>", "</s>"]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Turns written back to back: an answer's first characters can merge with the question's last.
CONCAT = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
TEXTS = [
    "",
    " ",
    "x",
    "hello world",
    "  leading and trailing  ",
    "tabs\t\tand\n\n\nnewlines\r\n\r\n",
    "many     spaces          here",
    "Héllo Wörld: déjà vu, naïve café",
    "e\u0301 a\u0308 q\u0307\u0301 \u0301alone",
    "emoji 😀👍🏽 👨\u200d👩\u200d👧\u200d👦 🇫🇷",
    "日本語のテキストと中文和한국어",
    "عربى עברית Ελληνικά русский",
    "<|endoftext|> specials <|im_start|>user\nhi<|im_end|>",
    "\u00a0\u2009\u3000\u200b zero-width\u2028 Ġ ĠĠ",
    "def f(x):\n    return x  # comment\n",
]
# Families whose offsets come from the ids (name → what differs from a plain byte-level BPE).
TABLE = {
    "plain": "GPT-2's split, no post-processor",
    "gpt2": "GPT-2's post-processor: ByteLevel, offsets not trimmed",
    "trim": "ByteLevel post-processor trimming offsets, with a prefix space",
    "roberta": "RobertaProcessing trimming offsets",
    "llama3": "Llama 3's split regex, ByteLevel without its own; a TemplateProcessing adding <s>",
    "nfc": "an NFC normalizer: a text NFC would change goes to the reference",
    "deepseek": "an empty normalizer Sequence before Llama 3's split",
    "hf-chatml": "the plain BPE through transformers, with a ChatML template",
}
NO_TABLE = {
    "prefix-space": "adds a prefix space",
    "sentencepiece": "pre-tokenizer (Metaspace) is not one ByteLevel step",
}


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> types.SimpleNamespace:
    """Family name → tokenizer spec; and the hf: folders with chat templates."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

    root = tmp_path_factory.mktemp("offsets")
    _, files = stdlib_modules()
    corpus = [t for t in (p.read_text(encoding="utf-8") for p in files[:40]) if t.strip()]
    plain = train_bpe(corpus, vocab_size=1000, specials=SPECIALS)
    ids = {name: plain.token_to_id(name) for name in ("<s>", "</s>")}
    specs: dict[str, str] = {}

    def save(name: str, change=None, tok=None) -> None:
        tok = tok or tokenizers.Tokenizer.from_str(plain.to_str())
        if change is not None:
            change(tok)
        (root / name).mkdir()
        tok.save(str(root / name / "tokenizer.json"))
        specs[name] = str(root / name / "tokenizer.json")

    def setter(attribute, value):
        return lambda tok: setattr(tok, attribute, value)

    save("plain")
    save("gpt2", setter("post_processor", processors.ByteLevel(trim_offsets=False)))
    save("trim", setter("post_processor", processors.ByteLevel(trim_offsets=True)))
    roberta = processors.RobertaProcessing(("</s>", ids["</s>"]), ("<s>", ids["<s>"]))
    save("roberta", setter("post_processor", roberta))
    llama3_pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    llama3_post = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ids["<s>"])]),
        ]
    )
    save(
        "llama3",
        lambda tok: (
            setattr(tok, "pre_tokenizer", llama3_pre),
            setattr(tok, "post_processor", llama3_post),
        ),
    )
    save("nfc", setter("normalizer", normalizers.NFC()))
    deepseek_pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    save(
        "deepseek",
        lambda tok: (
            setattr(tok, "normalizer", normalizers.Sequence([])),
            setattr(tok, "pre_tokenizer", deepseek_pre),
        ),
    )
    save("prefix-space", setter("pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)))
    # An added token that takes the white space before it: where there is some, the tokens of
    # the text no longer add up to it.
    save(
        "lstrip", lambda tok: tok.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True)])
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    sentencepiece = train_bpe(
        corpus,
        vocab_size=1200,
        specials=[*SPECIALS, "[UNK]", *bytes_],
        model=models.BPE(byte_fallback=True, unk_token="[UNK]"),
        pre_tokenizer=pre_tokenizers.Metaspace(),
        decoder=decoders.Metaspace(),
        alphabet=(),
    )
    save("sentencepiece", tok=sentencepiece)

    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    folders = {}
    for name, template in (("chatml", CHATML), ("concat", CONCAT)):
        folders[name] = root / f"hf-{name}"
        PreTrainedTokenizerFast(
            tokenizer_object=plain, eos_token="<|endoftext|>", chat_template=template
        ).save_pretrained(str(folders[name]))
    specs["hf-chatml"] = f"hf:{folders['chatml']}"
    return types.SimpleNamespace(specs=specs, folders=folders)


def _open(spec: str, engine: str = "auto"):
    return resolve_tokenizer(spec, get_manager()).factory(spec, engine=engine)


def _same(got, want) -> bool:
    return len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _not_nfc(texts: list[str]) -> int:
    return sum(not unicodedata.is_normalized("NFC", text) for text in texts)


# --- offsets from the ids ------------------------------------------------------------------------


@pytest.mark.parametrize("family", TABLE)
def test_offsets_from_the_ids_are_the_references(toks, caplog, family):
    spec = toks.specs[family]
    fast, reference = _open(spec), _open(spec, "hf")
    unproven = 0
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        # The first batch is checked against hf inside the tokenizer; the later ones are not.
        for batch in (TEXTS, TEXTS[::-1], ["only one"], []):
            ids, offsets = fast.encode_batch(batch, offsets=True)
            want_ids, want_offsets = reference.encode_batch(batch, offsets=True)
            assert _same(ids, want_ids) and _same(offsets, want_offsets)
            assert all(doc.dtype == np.uint32 for doc in ids)
            unproven += _not_nfc(batch) if family == "nfc" else 0
    assert fast.engine == "gigatoken"
    assert fast._engines.table() is not None  # the offsets came from the ids
    assert fast.by_reference() == ({"unproven-offsets": unproven} if unproven else {})
    assert len(_warnings(caplog)) == (1 if unproven else 0)


TEXT = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(
            [
                " ",
                "  ",
                "\n",
                "\n\n",
                "\t",
                "\r\n",
                "\u00a0",
                "\u3000",
                "Ġ",
                "a",
                "hello",
                " world",
                "'s",
                "123",
                "日本語",
                "😀",
                "👍🏽",
                "e\u0301",
                "\u0301",
                "\u200d",
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
            ]
        ),
    ),
    max_size=12,
).map("".join)


@st.composite
def _spans(draw, length: int) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint character spans of a text of ``length`` characters."""
    cuts = sorted(draw(st.sets(st.integers(0, length), max_size=6)))
    return tuple(zip(cuts[::2], cuts[1::2]))


@pytest.mark.parametrize("family", [f for f in TABLE if f != "hf-chatml"])
def test_random_texts_get_the_reference_offsets_and_masks(toks, family):
    spec = toks.specs[family]
    fast, reference = _open(spec), _open(spec, "hf")

    @settings(max_examples=examples(0.4), database=None)
    @given(st.lists(TEXT, min_size=1, max_size=5), st.data())
    def check(texts, data):
        ids, offsets = fast.encode_batch(texts, offsets=True)
        want_ids, want_offsets = reference.encode_batch(texts, offsets=True)
        assert _same(ids, want_ids) and _same(offsets, want_offsets)
        for text, got, want in zip(texts, offsets, want_offsets):
            spans = data.draw(_spans(len(text)))
            assert np.array_equal(loss_mask(got, spans), loss_mask(want, spans))
        # Neither engine nor table dropped, and only the texts NFC changes sent to hf.
        assert fast.engine == "gigatoken" and fast._engines.table() is not None
        if family != "nfc":
            assert "unproven-offsets" not in fast.by_reference()

    check()


# --- whole prepared datasets ---------------------------------------------------------------------

EDGE_PAIRS = [
    {"prompt": "日本語で答えて", "completion": "はい、答えます 😀👍🏽"},
    {"prompt": "Σ of 1..3?", "completion": "6 — easy ✓"},
    # "\n   " is one pre-token: the prompt's newline and the completion's indent.
    {"prompt": "def add(a, b):", "completion": "    return a + b"},
    {"prompt": "x =", "completion": "\n\n\ny"},
    # Combining marks (no precomposed form, so NFC keeps them) and a ZWJ opening the completion.
    {"prompt": "q", "completion": "\u0307\u0301 accents q\u0307"},
    {"prompt": "family 👨\u200d👩\u200d👧", "completion": "\u200d👦 joined"},
]
EDGE_TURNS = [
    # With the concatenating template, each answer's first characters can merge with the
    # question's last: one BPE token across the start of the loss span.
    ("hello wor", "ld and more"),
    ("x = (", ")) + y"),
    ("日本", "語です"),
    ("emoji 👍", "🏽 skin tone"),
    ("trailing space ", " leading space"),
]


def _pairs(count: int) -> list[dict[str, str]]:
    records = (record for record, _ in StdlibQASource("sample:stdlib-qa").records())
    return [record for record, _ in zip(records, range(count))]


def _conversations() -> list[dict]:
    pairs = _pairs(200)
    turns = [
        (a["prompt"], a["completion"], b["prompt"], b["completion"])
        for a, b in zip(pairs[::2], pairs[1::2])
    ]
    turns += [(q, a, a, q) for q, a in EDGE_TURNS]
    roles = ("user", "assistant") * 2
    return [{"messages": [{"role": r, "content": c} for r, c in zip(roles, t)]} for t in turns]


def _same_on_both_engines(tmp_path, sources, tokenizer: str, **options) -> None:
    options = {"progress": False, "workers": 1, **options}
    for engine in ("hf", "auto"):
        gristmill.prepare(sources, tmp_path / engine, tokenizer=tokenizer, engine=engine, **options)
    assert tree_bytes(tmp_path / "hf") == tree_bytes(tmp_path / "auto")
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    [train] = [split for name, split in manifest["splits"].items() if name == "train"]
    assert 0 < train["num_loss_tokens"] < train["num_tokens"]  # masks that can differ


def test_prompt_completion_prepares_the_same_on_both_engines(toks, tmp_path, write_jsonl):
    # The whole built-in sample, and pairs whose loss span starts inside what the BPE merges;
    # dedup and the val split hash the masks too.
    sources = ["sample:stdlib-qa", write_jsonl(EDGE_PAIRS)]
    _same_on_both_engines(tmp_path, sources, toks.specs["plain"], val_fraction=0.1, dedup=True)


@pytest.mark.parametrize("template", ["chatml", "concat", "built-in"])
def test_chat_prepares_the_same_on_both_engines(toks, tmp_path, write_jsonl, template):
    pytest.importorskip("jinja2")
    spec = toks.specs["plain"] if template == "built-in" else f"hf:{toks.folders[template]}"
    _same_on_both_engines(tmp_path, [write_jsonl(_conversations())], spec)


def test_raw_combining_marks_prepare_the_same_on_both_engines(toks, tmp_path, write_jsonl):
    records = [{"prompt": "e", "completion": "\u0301 then a\u0308"}, *EDGE_PAIRS]
    _same_on_both_engines(tmp_path, [write_jsonl(records)], toks.specs["plain"], normalize=False)


# --- the reference where the ids cannot tell ------------------------------------------------------


def test_a_document_the_ids_cannot_place_goes_to_the_reference_and_is_counted(toks, caplog):
    spec = toks.specs["lstrip"]
    fast, reference = _open(spec), _open(spec, "hf")
    first = ["a <mask> b", "plain text", "x<mask>y"]  # the first <mask> takes the space before it
    then = ["c  <mask>", "日本 <mask>", "no mask here"]
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        for batch in (first, then):
            got = fast.encode_batch(batch, offsets=True)
            want = reference.encode_batch(batch, offsets=True)
            assert _same(got[0], want[0]) and _same(got[1], want[1])
    assert fast.engine == "gigatoken" and fast._engines.table() is not None
    assert fast.by_reference() == {"unproven-offsets": 3}
    [warning] = _warnings(caplog)  # the first time only; the count goes on
    assert spec in warning and "tokens of 1 document(s)" in warning and "index 0" in warning


def test_documents_of_a_newer_unicode_go_to_the_reference_and_are_counted(toks):
    spec = toks.specs["plain"]
    fast, reference = _open(spec), _open(spec, "hf")
    texts = ["plain", "\u0378 is unassigned in every Unicode version so far", "déjà"]
    for offsets in (False, True):
        got = fast.encode_batch(texts, offsets=offsets)
        want = reference.encode_batch(texts, offsets=offsets)
        assert _same(got[0], want[0])
        assert got[1] is None if not offsets else _same(got[1], want[1])
    assert fast.by_reference() == {"newer-unicode": 2}


def test_offsets_that_differ_on_the_first_batch_are_dropped_with_a_warning(toks, caplog):
    spec = toks.specs["plain"]
    fast, reference = _open(spec), _open(spec, "hf")
    fast.encode_batch(TEXTS)  # ids checked
    # A wrong table: the one of a tokenizer that trims offsets (" world" would start at "w").
    fast._engines.table()
    fast._engines._table = offset_table(Path(toks.specs["trim"]).read_text())
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        for batch in (TEXTS, TEXTS[::-1]):
            got = fast.encode_batch(batch, offsets=True)
            want = reference.encode_batch(batch, offsets=True)
            assert _same(got[0], want[0]) and _same(got[1], want[1])
    [warning] = _warnings(caplog)
    assert spec in warning and "offsets of the gigatoken engine differ from hf's" in warning
    assert fast._engines.table() is None
    assert fast.engine == "gigatoken"  # its ids are still right: only its offsets are dropped


@pytest.mark.parametrize("family", NO_TABLE)
def test_a_tokenizer_the_table_cannot_describe_gets_the_references_offsets_and_says_so(
    toks, caplog, family
):
    spec = toks.specs[family]
    fast, reference = _open(spec), _open(spec, "hf")
    with caplog.at_level(logging.INFO, logger="gristmill"):
        got = fast.encode_batch(TEXTS, offsets=True)
    want = reference.encode_batch(TEXTS, offsets=True)
    assert _same(got[0], want[0]) and _same(got[1], want[1])
    said = [r.getMessage() for r in caplog.records if "cannot give token offsets" in r.getMessage()]
    assert len(said) == 1 and NO_TABLE[family] in said[0] and "encoded with hf" in said[0]
    assert fast.engine == "gigatoken"  # ids without offsets still come from it
    assert _same(fast.encode_batch(TEXTS)[0], want[0])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c["model"].update(type="WordPiece"), "model is WordPiece"),
        (lambda c: c["model"].update(continuing_subword_prefix="##"), "prefix or suffix"),
        (lambda c: c["model"].update(dropout=0.1), "dropout"),
        (lambda c: c.update(normalizer={"type": "Lowercase"}), r"normalizer \(Lowercase\)"),
        (
            lambda c: c.update(
                normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}] * 2}
            ),
            r"normalizer \(NFC, NFC\)",
        ),
        (lambda c: c.update(pre_tokenizer={"type": "Whitespace"}), "not one ByteLevel step"),
        (lambda c: c.update(pre_tokenizer=None), "not one ByteLevel step"),
        (
            lambda c: c.update(
                pre_tokenizer={"type": "Sequence", "pretokenizers": [c["pre_tokenizer"]] * 2}
            ),
            "not one ByteLevel step",  # two byte-level encodings: a byte would be two characters
        ),
        (
            lambda c: c.update(
                post_processor={
                    "type": "Sequence",
                    "processors": [{"type": "ByteLevel", "trim_offsets": True}] * 2,
                }
            ),
            "trims offsets twice",
        ),
        (lambda c: c.update(post_processor={"type": "Future"}), "Future post-processor"),
    ],
)
def test_the_table_refuses_what_it_cannot_describe(toks, change, reason):
    config = json.loads(Path(toks.specs["plain"]).read_text())
    change(config)
    with pytest.raises(Unsupported, match=reason):
        offset_table(json.dumps(config))


@pytest.mark.parametrize("family", ["plain", "hf-chatml"])
def test_a_tokenizer_pickles_with_its_table_or_before_it(toks, family):
    spec = toks.specs[family]
    reference = _open(spec, "hf").encode_batch(TEXTS, offsets=True)
    fresh = _open(spec)
    used = _open(spec)
    used.encode_batch(TEXTS, offsets=True)
    for tok in (fresh, used):
        copy = pickle.loads(pickle.dumps(tok))
        got = copy.encode_batch(TEXTS, offsets=True)
        assert _same(got[0], reference[0]) and _same(got[1], reference[1])
        assert copy.engine == "gigatoken" and copy._engines.table() is not None
