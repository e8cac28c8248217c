"""Encoding engines of the hf-tokenizers plugin: gigatoken gives exactly the reference's ids, or is
not used.

The reference engine (``hf``) is the tokenizer's own library. Every tokenizer here is trained by
the tests on standard-library text, so nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import GristmillError, MissingDependencyError
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.plugin.components import TokenizerType
from gristmill.plugin.manager import get_manager
from gristmill_sample import stdlib_modules
from tests.helpers import examples, train_bpe, tree_bytes

try:
    import gigatoken
except ImportError:  # the plugin then encodes with hf alone
    gigatoken = None
needs_gigatoken = pytest.mark.skipif(gigatoken is None, reason="gigatoken is not installed")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "[UNK]"]
# Split regex of the Llama 3 family, one of the schemes gigatoken implements natively.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Family → the engine "auto" picks for it.
FAMILIES = {
    "bpe": "gigatoken",  # byte-level BPE, GPT-2 split: PATH/tokenizer.json
    "bpe-hf": "gigatoken",  # the same through transformers: hf:FOLDER
    "llama3-split": "gigatoken",  # Split regex + ByteLevel without its own regex
    "nfc-added": "gigatoken",  # NFC normalizer and added tokens, special or not
    "sentencepiece": "gigatoken",  # Metaspace BPE with byte fallback
    "wordpiece": "hf",
    "unigram": "hf",
}
FAST = [name for name, engine in FAMILIES.items() if engine == "gigatoken"]


def _corpus() -> list[str]:
    _, files = stdlib_modules()
    texts = (p.read_text(encoding="utf-8") for p in files[:40])
    return [t for t in texts if t.strip()]


LONG = _corpus()[-1] + "x" * 5000 + " " * 3000 + "\n" * 500 + "日本語" * 700
TEXTS = [
    "",
    " ",
    "\n",
    "x",
    "hello world",
    "  leading and trailing  ",
    "tabs\t\tand\n\n\nnewlines\r\n\r\n",
    "many     spaces          here",
    "Héllo Wörld: déjà vu, naïve café",
    "ﬁ ligature, Ⅻ, ① ｆｕｌｌｗｉｄｔｈ, e\u0301 a\u0308",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "日本語のテキストと中文和한국어",
    "عربى עברית Ελληνικά русский",
    "don't I'LL we've 1234567 3.14159 0x1F",
    "<|endoftext|> specials <|im_start|>user\nhi<|im_end|>",
    "\u00a0\u2009\u3000\u200b zero-width\u2028",
    "def f(x):\n    return x  # comment\n",
    LONG,
]


@pytest.fixture(scope="module")
def fams(tmp_path_factory) -> dict[str, str]:
    """Family name → tokenizer spec, for tokenizers trained here (small vocabularies)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("engines")
    corpus = _corpus()
    specs = {}

    def save(name: str, tok) -> None:
        (root / name).mkdir()
        tok.save(str(root / name / "tokenizer.json"))
        specs[name] = str(root / name / "tokenizer.json")

    def byte_level(pre_tokenizer, normalizer=None):
        return train_bpe(
            corpus,
            vocab_size=1000,
            specials=SPECIALS,
            normalizer=normalizer,
            pre_tokenizer=pre_tokenizer,
        )

    bpe = byte_level(pre_tokenizers.ByteLevel(add_prefix_space=False))
    save("bpe", bpe)
    save(
        "llama3-split",
        byte_level(
            pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        ),
    )
    added = byte_level(pre_tokenizers.ByteLevel(add_prefix_space=True), normalizers.NFC())
    added.add_tokens([tokenizers.AddedToken("    return", normalized=False), "日本"])
    save("nfc-added", added)
    # The same model without the GPT-2 split: gigatoken 0.10 splits with that regex anyway.
    no_regex = tokenizers.Tokenizer.from_str(bpe.to_str())
    no_regex.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    save("no-regex", no_regex)
    # Steps before the split that gigatoken 0.10 loads and then ignores: "00" is one token to it.
    for name, step in (
        ("digits", pre_tokenizers.Digits(individual_digits=True)),
        ("punctuation", pre_tokenizers.Punctuation()),
    ):
        ignored = tokenizers.Tokenizer.from_str(bpe.to_str())
        ignored.pre_tokenizer = pre_tokenizers.Sequence(
            [
                step,
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        save(name, ignored)

    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    sentencepiece = train_bpe(
        corpus,
        vocab_size=1200,
        specials=SPECIALS + bytes_,
        model=models.BPE(byte_fallback=True, unk_token="[UNK]"),
        pre_tokenizer=pre_tokenizers.Metaspace(),
        decoder=decoders.Metaspace(),
        alphabet=(),
    )
    save("sentencepiece", sentencepiece)

    wordpiece = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(
        corpus,
        trainers.WordPieceTrainer(vocab_size=800, special_tokens=SPECIALS, show_progress=False),
    )
    save("wordpiece", wordpiece)

    # Unigram training is slow; a hand-made vocabulary does: pieces and their log-probabilities.
    pieces = [("[UNK]", 0.0), ("<|endoftext|>", 0.0), ("▁", -2.0)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789().:,_'=#"]
    pieces += [(w, -4.0) for w in ("▁def", "▁return", "▁self", "▁import", "ing", "tion", "▁the")]
    unigram = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.add_special_tokens(["<|endoftext|>"])
    save("unigram", unigram)

    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    folder = root / "bpe-hf"
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(
        str(folder)
    )
    specs["bpe-hf"] = f"hf:{folder}"
    return specs


def _open(spec: str, engine: str = "auto", **options):
    return resolve_tokenizer(spec, get_manager()).factory(spec, engine=engine, **options)


def _same(got, want) -> bool:
    return len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- the same ids, offsets and outputs -----------------------------------------------------------


@needs_gigatoken
@pytest.mark.parametrize("family", FAMILIES)
def test_auto_takes_gigatoken_where_it_loads_the_tokenizer(fams, family):
    assert _open(fams[family]).engine == FAMILIES[family]
    assert _open(fams[family], "hf").engine == "hf"


@pytest.mark.parametrize(
    ("family", "engine"),
    [(family, "auto") for family in FAMILIES]
    + [pytest.param(family, "gigatoken", marks=needs_gigatoken) for family in FAST],
)
def test_every_engine_gives_the_reference_ids_and_offsets(fams, caplog, family, engine):
    reference = _open(fams[family], "hf")
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        tok = _open(fams[family], engine)
        # The first batch is also checked against hf inside the tokenizer; the later ones are not.
        for batch in (TEXTS, TEXTS[::-1], [LONG, ""], ["only one"]):
            ids, offsets = tok.encode_batch(batch)
            assert offsets is None
            assert _same(ids, reference.encode_batch(batch)[0])
            assert all(doc.dtype == np.uint32 for doc in ids)
        ids, offsets = tok.encode_batch(TEXTS, offsets=True)  # loss masks: hf's own offsets
        want_ids, want_offsets = reference.encode_batch(TEXTS, offsets=True)
        assert _same(ids, want_ids) and _same(offsets, want_offsets)
    assert tok.engine == (engine if engine != "auto" else FAMILIES[family] if gigatoken else "hf")
    assert _warnings(caplog) == []


TEXT = st.one_of(
    st.text(max_size=120),
    st.text(st.sampled_from(" \t\n\r\u00a0\u3000ab1'sSé😀日"), max_size=60),
)


@needs_gigatoken
@pytest.mark.parametrize("family", FAST)
def test_random_texts_get_the_reference_ids(fams, family):
    fast, reference = _open(fams[family], "gigatoken"), _open(fams[family], "hf")

    # Runs for every tokenizer family, each text through both engines.
    @settings(max_examples=examples(0.4), database=None)
    @given(st.lists(TEXT, max_size=6))
    def check(texts):
        assert _same(fast.encode_batch(texts)[0], reference.encode_batch(texts)[0])
        assert fast.engine == "gigatoken"  # not fallen back: the ids came from gigatoken

    check()


@needs_gigatoken
def test_the_engine_changes_neither_fingerprint_nor_saved_tokenizer(fams, tmp_path):
    for family in ("bpe", "bpe-hf"):
        spec = fams[family]
        family_type = resolve_tokenizer(spec, get_manager())
        hf, fast = _open(spec, "hf"), _open(spec, "gigatoken")
        assert hf.fingerprint() == fast.fingerprint()
        saved = {}
        for tok in (hf, fast):
            folder = tmp_path / family / tok.engine
            folder.mkdir(parents=True)
            saved[tok.engine] = (tok.save(folder), tree_bytes(folder))
        assert saved["hf"] == saved["gigatoken"]
        folder, config = tmp_path / family / "hf", saved["hf"][0]
        assert family_type.load(folder, config).engine == "gigatoken"
        assert family_type.load(folder, config, engine="hf", future_option=1).engine == "hf"
        reloaded = family_type.load(folder, config, engine="gigatoken")
        assert _same(reloaded.encode_batch(TEXTS)[0], hf.encode_batch(TEXTS)[0])
        assert _open(spec, "auto", future_option=1).engine == "gigatoken"


@needs_gigatoken
def test_prepare_writes_the_same_dataset_whatever_the_engine(fams, tmp_path, write_jsonl):
    src = [
        write_jsonl([{"text": t} for t in TEXTS if t.strip()]),
        write_jsonl(  # loss masks: offsets from hf, ids from either
            [
                {"prompt": "Σ of 1..3?", "completion": "6 — easy ✓"},
                {"prompt": "def add(a, b):", "completion": "    return a + b"},
            ],
            "qa.jsonl",
        ),
    ]
    # With a val split and dedup (both hash the ids), and in worker processes that reload the
    # tokenizer from the dataset and check gigatoken again.
    options = dict(val_fraction=0.3, dedup=True, task_bytes=300, progress=False)
    for engine, workers in (("hf", 1), ("gigatoken", 1), ("auto", 2)):
        gristmill.prepare(
            src, tmp_path / engine, tokenizer=fams["bpe"], engine=engine, workers=workers, **options
        )
    assert tree_bytes(tmp_path / "hf") == tree_bytes(tmp_path / "gigatoken")
    assert tree_bytes(tmp_path / "hf") == tree_bytes(tmp_path / "auto")
    assert len(list((tmp_path / "auto").glob("*/*.tokens"))) > 2  # several tasks


@needs_gigatoken
def test_a_tokenizer_on_gigatoken_pickles(fams):
    for family in ("bpe", "bpe-hf"):
        tok = _open(fams[family], "gigatoken")
        copy = pickle.loads(pickle.dumps(tok))
        assert copy.engine == "gigatoken"
        assert _same(copy.encode_batch(TEXTS)[0], tok.encode_batch(TEXTS)[0])


# --- falling back --------------------------------------------------------------------------------


@needs_gigatoken
def test_a_tokenizer_gigatoken_gets_wrong_falls_back_to_hf_with_a_warning(fams, caplog):
    import tokenizers

    spec = fams["no-regex"]
    texts = ["", "ab", "x y", "a  b", "a\n\nb"]
    library = tokenizers.Tokenizer.from_file(spec)
    want = [e.ids for e in library.encode_batch(texts, add_special_tokens=False)]
    got = gigatoken.Tokenizer.from_json(library.to_str()).encode_batch_list(texts, parallel=False)
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    if first is None:
        pytest.skip("this gigatoken encodes ByteLevel(use_regex=False) right: no real difference")
    tok = _open(spec)
    assert tok.engine == "gigatoken"  # it loads the tokenizer, so auto takes it
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        assert [ids.tolist() for ids in tok.encode_batch(texts)[0]] == want
        assert tok.engine == "hf"
        assert [ids.tolist() for ids in tok.encode_batch(texts[::-1])[0]] == want[::-1]
    [warning] = _warnings(caplog)
    assert spec in warning
    assert f"gives other ids than hf for the text at index {first} of its first batch" in warning
    assert "encoding with hf from now on" in warning


class _Tampered:
    """The real gigatoken engine of a tokenizer, with one id of one text changed, or failing."""

    def __init__(self, engine, index: int | None):
        self.engine, self.index, self.name = engine, index, engine.name

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = self.engine.encode(texts)
        if self.index is None:
            raise RuntimeError("gigatoken failed")
        ids[self.index] = ids[self.index] + 1
        return ids


@needs_gigatoken
@pytest.mark.parametrize("family", ["bpe", "bpe-hf"])
@pytest.mark.parametrize("index", [3, None])
def test_a_difference_or_failure_on_first_use_falls_back(fams, caplog, family, index):
    tok, reference = _open(fams[family]), _open(fams[family], "hf")
    tok._engines.fast = _Tampered(tok._engines.fast, index)
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        assert _same(tok.encode_batch(TEXTS)[0], reference.encode_batch(TEXTS)[0])
        assert tok.engine == "hf"
        assert _same(tok.encode_batch(["x y z"])[0], reference.encode_batch(["x y z"])[0])
    [warning] = _warnings(caplog)
    problem = (
        "failed on this batch (RuntimeError: gigatoken failed)" if index is None else "index 3"
    )
    assert fams[family] in warning and problem in warning
    assert tok.handoff() == {"engine": "hf"}  # a prepare's workers encode with hf, unchecked


@needs_gigatoken
def test_a_failure_after_first_use_falls_back_too(fams, caplog):
    tok, reference = _open(fams["bpe"]), _open(fams["bpe"], "hf")
    tok.encode_batch(TEXTS)  # checked: gigatoken from now on
    tok._engines.fast = _Tampered(tok._engines.fast, None)
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        assert _same(tok.encode_batch(["a b"])[0], reference.encode_batch(["a b"])[0])
    assert tok.engine == "hf"
    assert "failed on this batch" in _warnings(caplog)[0]


@needs_gigatoken
def test_a_text_hf_refuses_too_is_the_datas_fault_not_the_engines(fams, caplog):
    tok = _open(fams["bpe"])
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        with pytest.raises(ValueError, match="refused the text"):  # a lone surrogate
            tok.encode_batch(["fine", "bad \ud800 text"])
        tok.encode_batch(TEXTS)
    assert tok.engine == "gigatoken"
    assert _warnings(caplog) == []


# --- asking for an engine ------------------------------------------------------------------------


@needs_gigatoken
@pytest.mark.parametrize("family", ["wordpiece", "unigram"])
def test_gigatoken_by_name_for_a_tokenizer_it_cannot_load_is_a_clear_error(fams, family):
    with pytest.raises(GristmillError, match=r"gigatoken engine does not support this tokenizer"):
        _open(fams[family], "gigatoken")


@needs_gigatoken
@pytest.mark.parametrize(("family", "step"), [("digits", "Digits"), ("punctuation", "Punctuation")])
def test_a_pre_tokenizer_step_gigatoken_ignores_keeps_it_out(fams, caplog, family, step):
    """gigatoken loads these and splits as if they were not there: its ids would differ
    wherever the first batch happened not to show it, so it is never used for them."""
    reference = _open(fams[family], "hf")
    with caplog.at_level(logging.DEBUG, logger="gristmill"):
        tok = _open(fams[family])
        assert tok.engine == "hf"
    assert any(f"{step} pre-tokenizer" in r.getMessage() for r in caplog.records)
    assert _same(tok.encode_batch(["00 a00, b!"])[0], reference.encode_batch(["00 a00, b!"])[0])
    with pytest.raises(GristmillError, match=rf"does not support this tokenizer: .*{step}"):
        _open(fams[family], "gigatoken")


@needs_gigatoken
def test_the_cli_reports_an_unsupported_engine_in_one_line(fams, tmp_path, write_jsonl, capsys):
    src = write_jsonl([{"text": "x"}])
    args = ["prepare", str(src), "-o", str(tmp_path / "o"), "--tokenizer", fams["wordpiece"]]
    assert main([*args, "--engine", "gigatoken"]) == 2
    err = capsys.readouterr().err
    assert 'Unsupported model type "WordPiece"' in err and "--engine hf" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_without_gigatoken_auto_uses_hf_and_naming_it_says_what_to_install(
    fams, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "gigatoken", None)
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        for family in ("bpe", "bpe-hf"):
            tok = _open(fams[family])
            assert tok.engine == "hf"
            assert len(tok.encode_batch(TEXTS)[0]) == len(TEXTS)
    assert _warnings(caplog) == []
    with pytest.raises(MissingDependencyError, match=r"pip install gigatoken"):
        _open(fams["bpe"], "gigatoken")


def test_an_unknown_engine_is_an_error(fams):
    with pytest.raises(GristmillError, match=r"unknown engine 'turbo'; choose one of auto, hf"):
        _open(fams["bpe"], "turbo")


def test_the_plugin_declares_its_engines():
    for name in ("hf", "tokenizer-json"):
        assert get_manager().get(TokenizerType, name).engines == ("hf", "gigatoken")


@needs_gigatoken
def test_characters_of_a_newer_unicode_go_to_the_reference(tmp_path):
    # U+A7CF was assigned in Unicode 16: gigatoken's split regex reads it as a letter, hf's as
    # punctuation, so the pre-tokens (and, with merges across them, the ids) differ.
    rows = "".join(f'    "\ua7cf",\n    None,\n    "{chr(0x61 + i % 26)}",\n' for i in range(300))
    tok = train_bpe([rows] * 20, vocab_size=400)
    (tmp_path / "t").mkdir()
    spec = str(tmp_path / "t" / "tokenizer.json")
    tok.save(spec)
    raw = gigatoken.Tokenizer.from_json(tok.to_str()).encode_batch_list([rows], parallel=False)
    reference = tok.encode(rows, add_special_tokens=False).ids
    assert list(raw[0]) != reference  # the engines really disagree on this text
    fast = _open(spec, "gigatoken")
    texts = ["plain ascii first", rows, "déjà vu"]  # the odd text in the middle of a batch
    assert _same(fast.encode_batch(texts)[0], _open(spec, "hf").encode_batch(texts)[0])
    assert fast.engine == "gigatoken"  # routed, not a fallback


# --- memory ---------------------------------------------------------------------------------------


def _reloaded(spec: str, directory):
    """The tokenizer as a prepare worker has it: reloaded from a dataset's saved copy."""
    family = resolve_tokenizer(spec, get_manager())
    config = _open(spec).save(directory)
    return family.load(directory, config, engine="auto")


@needs_gigatoken
def test_a_reloaded_tokenizer_lets_the_reference_go_and_opens_it_again(fams, tmp_path):
    tok, reference = _reloaded(fams["bpe"], tmp_path), _open(fams["bpe"], "hf")
    assert _same(tok.encode_batch(TEXTS)[0], reference.encode_batch(TEXTS)[0])
    assert tok._backend is None and tok.reopened == 0  # checked, then let go
    # A text of a newer Unicode goes to the reference: opened again, the same ids.
    texts = ["plain", "\u0378 is unassigned in every Unicode version so far"]
    assert _same(tok.encode_batch(texts)[0], reference.encode_batch(texts)[0])
    tok.encode_batch(["plain"])
    assert tok.reopened == 1 and tok._backend is not None  # kept from now on
    got, want = tok.encode_batch(TEXTS, offsets=True), reference.encode_batch(TEXTS, offsets=True)
    assert _same(got[0], want[0]) and _same(got[1], want[1])
    assert tok.decode(want[0][3]) == reference.decode(want[0][3])
    assert tok.engine == "gigatoken" and tok.reopened == 1


@needs_gigatoken
@pytest.mark.parametrize("family", ["bpe", "bpe-hf"])
def test_a_copy_handed_the_check_trusts_it_and_opens_the_reference_only_when_needed(
    fams, tmp_path, family
):
    """prepare checks the fast engine once, in its main process, and hands the result to its
    workers' copies of the tokenizer (tokenizer.json: without opening the reference at all)."""
    tok, reference = _open(fams[family]), _open(fams[family], "hf")
    config = tok.save(tmp_path)
    assert tok.handoff() == {}  # nothing encoded yet: nothing learned
    tok.encode_batch(["", ""])
    assert tok.handoff() == {}  # empty texts prove nothing
    tok.encode_batch(TEXTS)
    handoff = tok.handoff()
    assert handoff == {"checked": {"vocab_size": tok.vocab_size, "offsets": False}}
    copy = resolve_tokenizer(fams[family], get_manager()).load(tmp_path, config, **handoff)
    assert copy.vocab_size == tok.vocab_size and copy._engines.checked
    if family == "bpe":
        assert copy._backend is None  # never opened
    texts = TEXTS[::-1]
    assert _same(copy.encode_batch(texts)[0], reference.encode_batch(texts)[0])
    if family == "bpe":
        assert copy._backend is None and copy.reopened == 0
        # A text of a newer Unicode goes to the reference: opened now, the same ids.
        texts = ["plain", "\u0378 is unassigned in every Unicode version so far"]
        assert _same(copy.encode_batch(texts)[0], reference.encode_batch(texts)[0])
        assert copy.reopened == 1
    assert copy.engine == "gigatoken"


@needs_gigatoken
def test_gigatoken_never_truncates_or_pads_as_a_saved_file_says(tmp_path):
    """tokenizer.json gives gigatoken the file itself, which may carry truncation and padding
    settings: dropped, as the reference drops them."""
    saved = train_bpe(_corpus()[:5], vocab_size=400)
    saved.enable_truncation(4)
    saved.enable_padding(length=64)
    spec = str(tmp_path / "tokenizer.json")
    saved.save(spec)
    fast, reference = _open(spec, "gigatoken"), _open(spec, "hf")
    texts = [LONG[:3000], "a b"]
    want = reference.encode_batch(texts)[0]
    assert len(want[0]) > 64 and len(want[1]) < 4
    assert _same(fast.encode_batch(texts)[0], want) and fast.engine == "gigatoken"
    given = json.loads(fast._engines.fast._json)
    assert given["truncation"] is None and given["padding"] is None


@needs_gigatoken
@pytest.mark.parametrize("family", ["bpe", "sentencepiece"])
def test_gigatoken_built_again_to_empty_its_cache_gives_the_same_ids(fams, family, monkeypatch):
    from gristmill_hf_tokenizers import engines

    monkeypatch.setattr(engines, "LOOK_CHARS", 1)  # a look at the process's size every batch
    fast, reference = _open(fams[family], "gigatoken"), _open(fams[family], "hf")
    engine = fast._engines.fast
    engine.cache_budget = -1  # whatever the size: built again at every look
    for batch in (TEXTS, [LONG, *TEXTS[::-1]], TEXTS, [LONG]):
        assert _same(fast.encode_batch(batch)[0], reference.encode_batch(batch)[0])
    assert fast.engine == "gigatoken"
    assert engine.rebuilds == (4 if sys.platform == "linux" else 0)
