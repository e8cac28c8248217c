"""The hf-tokenizers plugin: ``hf:FOLDER`` (transformers) and ``PATH/tokenizer.json`` (tokenizers).

Every tokenizer here is trained by the tests on real text (standard library modules), so nothing
is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import DataError, MissingDependencyError
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.plugin.manager import get_manager
from gristmill_sample import stdlib_modules
from tests.helpers import examples, train_bpe, tree_bytes

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama-2 style: the template writes the BOS itself and closes every answer with the EOS.
LLAMA = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<s>", "</s>"]
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What does json.loads return for '[]'?"},
    {"role": "assistant", "content": "A list."},
    {"role": "user", "content": "And for '{}'?"},
    {"role": "assistant", "content": "A dict."},
]


def _texts(start: int, stop: int) -> list[str]:
    _, files = stdlib_modules()
    texts = (p.read_text(encoding="utf-8") for p in files[start:stop])
    return [t for t in texts if t.strip()]


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> types.SimpleNamespace:
    """Tokenizers trained here: a byte-level BPE (as tokenizer.json and as two transformers
    folders with different chat templates), a WordPiece, a large WordLevel and one with no EOS."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tokenizers")
    corpus = _texts(0, 80)

    bpe = train_bpe(corpus, vocab_size=2000, specials=SPECIALS)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    (root / "bpe").mkdir()
    bpe.save(str(root / "bpe" / "tokenizer.json"))

    chatml = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>", chat_template=CHATML
    )
    chatml.save_pretrained(str(root / "chatml"))

    llama_backend = tokenizers.Tokenizer.from_str(bpe.to_str())
    llama_backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
            ),
        ]
    )
    llama = PreTrainedTokenizerFast(
        tokenizer_object=llama_backend, bos_token="<s>", eos_token="</s>", chat_template=LLAMA
    )
    llama.save_pretrained(str(root / "llama"))

    wordpiece = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    wordpiece.train_from_iterator(
        corpus,
        trainers.WordPieceTrainer(
            vocab_size=1500,
            special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
            show_progress=False,
        ),
    )
    cls_sep = [(t, wordpiece.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=cls_sep
    )
    (root / "wordpiece").mkdir()
    wordpiece.save(str(root / "wordpiece" / "tokenizer.json"))

    # 70,000 words: ids no longer fit uint16. The EOS is an added token past them.
    words = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    big = tokenizers.Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big.add_special_tokens(["<|endoftext|>"])
    (root / "big").mkdir()
    big.save(str(root / "big" / "tokenizer.json"))

    bare = tokenizers.Tokenizer(
        models.WordLevel(vocab={"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")
    )
    bare.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Saved truncation and padding settings must not cut or pad documents.
    bare.enable_truncation(max_length=2)
    bare.enable_padding(pad_id=0, pad_token="[UNK]", length=8)
    (root / "bare").mkdir()
    bare.save(str(root / "bare" / "tokenizer.json"))

    return types.SimpleNamespace(
        root=root,
        bpe_json=root / "bpe" / "tokenizer.json",
        chatml=root / "chatml",
        llama=root / "llama",
        wordpiece_json=root / "wordpiece" / "tokenizer.json",
        big_json=root / "big" / "tokenizer.json",
        bare_json=root / "bare" / "tokenizer.json",
        reference_hf=lambda folder: __import__("transformers").AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True
        ),
        reference_json=lambda path: tokenizers.Tokenizer.from_file(str(path)),
    )


@pytest.fixture
def chat(toks) -> types.SimpleNamespace:
    """The tokenizers, for tests that render chat templates (transformers does it with jinja2)."""
    pytest.importorskip("jinja2")
    return toks


def _open(spec: str | Path):
    spec = str(spec)
    return resolve_tokenizer(spec, get_manager()).factory(spec)


def _documents(out: Path) -> list[tuple[np.ndarray, np.ndarray | None]]:
    docs = gristmill.open_dataset(out).documents
    return [docs.document(i) for i in range(docs.num_documents)]


# --- round trip ----------------------------------------------------------------------------------


def test_hf_and_tokenizer_json_store_the_tokenizers_own_ids(toks, tmp_path, write_jsonl):
    texts = _texts(80, 160)  # modules the BPE was not trained on
    src = write_jsonl([{"text": t} for t in texts])
    reference = toks.reference_hf(toks.chatml)
    eos = reference.eos_token_id
    stored = {}
    for spec in (f"hf:{toks.chatml}", str(toks.bpe_json)):
        out = tmp_path / ("hf" if spec.startswith("hf:") else "json")
        manifest = gristmill.prepare(
            src, out, tokenizer=spec, normalize=False, tokens_per_shard=50_000, progress=False
        )
        assert manifest["dtype"] == "uint16"
        assert manifest["tokenizer"]["vocab_size"] == 2000
        assert len(manifest["splits"]["train"]["shards"]) > 3
        stored[spec] = docs = _documents(out)
        assert len(docs) == len(texts)
        for text, (ids, mask) in zip(texts, docs):
            assert mask is None
            assert ids[-1] == eos and eos not in ids[:-1]
            want = reference(text, add_special_tokens=False)["input_ids"]
            assert ids[:-1].tolist() == want
    hf_docs, json_docs = stored.values()
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(hf_docs, json_docs))


def test_wordpiece_round_trip_with_the_tokenizers_own_cls_and_sep(toks, tmp_path, write_jsonl):
    texts = _texts(80, 120)
    out = tmp_path / "out"
    gristmill.prepare(
        write_jsonl([{"text": t} for t in texts]),
        out,
        tokenizer=str(toks.wordpiece_json),
        normalize=False,
        progress=False,
    )
    reference = toks.reference_json(toks.wordpiece_json)
    for text, (ids, _) in zip(texts, _documents(out)):
        # What the tokenizer itself adds by default: [CLS] before, [SEP] after.
        assert ids.tolist() == reference.encode(text).ids


def test_vocabulary_past_uint16_is_stored_as_uint32(toks, tmp_path, write_jsonl):
    out = tmp_path / "out"
    manifest = gristmill.prepare(
        write_jsonl([{"text": "w1 w69999 nope"}]), out, tokenizer=str(toks.big_json)
    )
    assert manifest["dtype"] == "uint32"
    assert manifest["tokenizer"]["vocab_size"] == 70_001  # the added <|endoftext|> included
    [(ids, _)] = _documents(out)
    assert ids.dtype == np.uint32
    assert ids.tolist() == [1, 69_999, 0, 70_000]
    assert gristmill.open_dataset(out).tokenizer.decode(ids).endswith("<|endoftext|>")


# --- BOS/EOS policy ------------------------------------------------------------------------------


def test_bos_eos_policy_per_tokenizer(toks):
    ref = toks.reference_json(toks.bpe_json)
    chatml = _open(f"hf:{toks.chatml}")
    assert (chatml.add_bos, chatml.add_eos) == (False, True)
    assert chatml.eos_id == ref.token_to_id("<|endoftext|>")
    assert chatml.pad_id == ref.token_to_id("<pad>")
    llama = _open(f"hf:{toks.llama}")  # its post-processor prepends <s> by default
    assert (llama.add_bos, llama.add_eos) == (True, True)
    assert (llama.bos_id, llama.eos_id) == (ref.token_to_id("<s>"), ref.token_to_id("</s>"))
    bpe = _open(toks.bpe_json)  # a bare file: EOS found by its common name
    assert (bpe.add_bos, bpe.add_eos, bpe.eos_id) == (False, True, ref.token_to_id("<|endoftext|>"))
    wordpiece = _open(toks.wordpiece_json)
    wp = toks.reference_json(toks.wordpiece_json)
    assert (wordpiece.add_bos, wordpiece.bos_id) == (True, wp.token_to_id("[CLS]"))
    assert (wordpiece.add_eos, wordpiece.eos_id) == (True, wp.token_to_id("[SEP]"))
    bare = _open(toks.bare_json)
    assert (bare.add_bos, bare.add_eos, bare.eos_id) == (False, False, None)


def test_documents_get_one_bos_and_one_eos(toks, tmp_path, write_jsonl):
    src = write_jsonl([{"text": "a b a"}, {"text": "print(1)<|endoftext|>"}])
    out = tmp_path / "bare"
    gristmill.prepare(
        write_jsonl([{"text": "a b a"}], "bare.jsonl"), out, tokenizer=str(toks.bare_json)
    )
    assert [ids.tolist() for ids, _ in _documents(out)] == [[1, 2, 1]]  # not cut, no EOS to add
    gristmill.prepare(src, tmp_path / "llama", tokenizer=f"hf:{toks.llama}")
    llama = gristmill.open_dataset(tmp_path / "llama").tokenizer
    first, second = (ids for ids, _ in _documents(tmp_path / "llama"))
    assert llama.decode(first) == "<s>a b a</s>"
    assert llama.decode(second) == "<s>print(1)<|endoftext|></s>"
    gristmill.prepare(src, tmp_path / "chatml", tokenizer=f"hf:{toks.chatml}")
    chatml = gristmill.open_dataset(tmp_path / "chatml").tokenizer
    # A text that already ends with the EOS does not get a second one.
    texts = [chatml.decode(ids) for ids, _ in _documents(tmp_path / "chatml")]
    assert texts == ["a b a<|endoftext|>", "print(1)<|endoftext|>"]


# --- loss masks ----------------------------------------------------------------------------------


def _decoded(out: Path) -> list[tuple[str, str | None]]:
    tok = gristmill.open_dataset(out).tokenizer
    return [
        (tok.decode(ids), None if mask is None else tok.decode(ids[mask.astype(bool)]))
        for ids, mask in _documents(out)
    ]


@pytest.mark.parametrize("family", ["chatml", "llama", "bpe_json"])
def test_prompt_completion_loss_is_the_completion_and_eos(toks, tmp_path, write_jsonl, family):
    records = [
        {"prompt": "Which module parses JSON?", "completion": "The json module."},
        {"prompt": "def add(a, b):", "completion": "return a + b", "system": "Write Python."},
        {"prompt": "Σ of 1..3?", "completion": "6 — easy ✓"},
    ]
    spec = str(toks.bpe_json) if family == "bpe_json" else f"hf:{getattr(toks, family)}"
    eos = "</s>" if family == "llama" else "<|endoftext|>"
    bos = "<s>" if family == "llama" else ""
    gristmill.prepare(write_jsonl(records), tmp_path / "out", tokenizer=spec, progress=False)
    for record, (text, trained) in zip(records, _decoded(tmp_path / "out")):
        head = f"{record['system']}\n\n" if "system" in record else ""
        assert text == f"{bos}{head}{record['prompt']}\n{record['completion']}{eos}"
        assert trained == record["completion"] + eos
    gristmill.prepare(
        write_jsonl(records, "b.jsonl"), tmp_path / "all", tokenizer=spec, train_on_prompt=True
    )
    assert all(trained is None for _, trained in _decoded(tmp_path / "all"))


def test_a_token_across_the_prompt_end_carries_no_loss(toks, tmp_path, write_jsonl):
    # The BPE's pre-tokenizer makes "\n   " one token (the prompt's newline and the
    # completion's indent): it starts in the prompt, so it carries no loss; the rest is exact.
    record = {"prompt": "def add(a, b):", "completion": "    return a + b"}
    gristmill.prepare(write_jsonl([record]), tmp_path / "out", tokenizer=f"hf:{toks.chatml}")
    assert _decoded(tmp_path / "out") == [
        ("def add(a, b):\n    return a + b<|endoftext|>", " return a + b<|endoftext|>")
    ]


def test_chat_uses_the_tokenizers_template_and_trains_on_assistant_turns(
    chat, tmp_path, write_jsonl
):
    reference = chat.reference_hf(chat.chatml)
    manifest = gristmill.prepare(
        write_jsonl([{"messages": CONVERSATION}]), tmp_path / "out", tokenizer=f"hf:{chat.chatml}"
    )
    assert manifest["tokenizer"]["chat_template"] == "tokenizer"
    [(text, trained)] = _decoded(tmp_path / "out")
    assert text == reference.apply_chat_template(CONVERSATION, tokenize=False) + "<|endoftext|>"
    assert trained == "A list.<|im_end|>\nA dict.<|im_end|>\n<|endoftext|>"
    [(ids, _)] = _documents(tmp_path / "out")
    rendered = reference.apply_chat_template(CONVERSATION, tokenize=False)
    assert ids[:-1].tolist() == reference(rendered, add_special_tokens=False)["input_ids"]


def test_a_template_that_writes_bos_and_eos_gets_neither_twice(chat, tmp_path, write_jsonl):
    gristmill.prepare(
        write_jsonl([{"messages": CONVERSATION}]), tmp_path / "out", tokenizer=f"hf:{chat.llama}"
    )
    [(text, trained)] = _decoded(tmp_path / "out")
    assert text == (
        "<s><<SYS>>Answer in one word.<</SYS>>[INST] What does json.loads return for '[]'? "
        "[/INST] A list.</s>[INST] And for '{}'? [/INST] A dict.</s>"
    )
    assert trained == " A list.</s> A dict.</s>"
    [(_, mask)] = _documents(tmp_path / "out")
    assert mask[0] == 0


def test_tokenizer_json_and_template_less_tokenizers_use_the_built_in_template(
    toks, tmp_path, write_jsonl
):
    manifest = gristmill.prepare(
        write_jsonl([{"messages": CONVERSATION}]), tmp_path / "out", tokenizer=str(toks.bpe_json)
    )
    assert manifest["tokenizer"]["chat_template"] == "built-in"
    [(text, trained)] = _decoded(tmp_path / "out")
    assert text.startswith("<|system|>\nAnswer in one word.\n<|user|>\n")
    assert trained == "A list.\nA dict.\n<|endoftext|>"


CONTENT = (
    st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=40)
    .map(str.strip)
    .filter(bool)
)


# Each example prepares a dataset with a transformers chat template: a quarter of the
# profile's examples.
@settings(max_examples=examples(0.25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), CONTENT),
        min_size=1,
        max_size=6,
    ).filter(lambda ts: any(role == "assistant" for role, _ in ts))
)
def test_chat_loss_is_exactly_the_assistant_turns(chat, tmp_path_factory, turns):
    root = tmp_path_factory.mktemp("chat")
    src = root / "c.jsonl"
    src.write_text(
        json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n",
        encoding="utf-8",
    )
    gristmill.prepare(src, root / "out", tokenizer=f"hf:{chat.chatml}", normalize=False)
    [(text, trained)] = _decoded(root / "out")
    assert text == "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in turns) + "<|endoftext|>"
    expected = "".join(f"{c}<|im_end|>\n" for r, c in turns if r == "assistant")
    assert trained == expected + ("<|endoftext|>" if turns[-1][0] == "assistant" else "")


@pytest.fixture
def odd_template(toks, tmp_path) -> Path:
    """The chatml folder with a template that numbers turns by the conversation's length, so a
    prefix of a conversation is not rendered as a prefix of the whole."""
    folder = tmp_path / "odd"
    shutil.copytree(toks.chatml, folder)
    template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}"
        "{% endif %}{% for m in messages %}[{{ loop.length }}] {{ m['content'] }}\n{% endfor %}"
    )
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in folder.glob("chat_template.*"):
        extra.write_text(template)
    return folder


def test_a_template_that_renders_prefixes_differently_is_a_clear_error(
    chat, odd_template, tmp_path, write_jsonl
):
    spec = f"hf:{odd_template}"
    turns = CONVERSATION[1:]
    with pytest.raises(
        DataError, match=r"data.jsonl:1: field 'messages': .*does not render turn 2"
    ):
        gristmill.prepare(write_jsonl([{"messages": turns}]), tmp_path / "a", tokenizer=spec)
    with pytest.raises(DataError, match=r"chat template cannot render .*no system turns"):
        gristmill.prepare(
            write_jsonl([{"messages": CONVERSATION}], "s.jsonl"), tmp_path / "b", tokenizer=spec
        )
    # The whole conversation trained needs no prefixes; skipped ones are counted.
    gristmill.prepare(
        write_jsonl([{"messages": turns}], "t.jsonl"),
        tmp_path / "c",
        tokenizer=spec,
        train_on_prompt=True,
    )
    manifest = gristmill.prepare(
        write_jsonl([{"messages": turns}, {"messages": CONVERSATION}], "u.jsonl"),
        tmp_path / "d",
        tokenizer=spec,
        train_on_prompt=True,
        on_error="skip",
    )
    assert manifest["provenance"]["skipped"] == {"chat-template": 1}


# --- the saved tokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["chatml", "bpe_json"])
def test_the_dataset_keeps_its_tokenizer(toks, tmp_path, write_jsonl, capsys, family):
    moved = tmp_path / "tok"
    if family == "chatml":
        shutil.copytree(toks.chatml, moved)
        spec = f"hf:{moved}"
    else:
        moved.mkdir()
        shutil.copy(toks.bpe_json, moved / "tokenizer.json")
        spec = str(moved / "tokenizer.json")
    records = [{"prompt": "Why?", "completion": "Because."}]
    out = tmp_path / "out"
    first = gristmill.prepare(write_jsonl(records), out, tokenizer=spec)
    shutil.rmtree(moved)  # open_dataset and inspect need nothing but the dataset directory
    ds = gristmill.open_dataset(out)
    tok = ds.tokenizer
    assert type(tok).__name__ == ("HFChatTokenizer" if family == "chatml" else "JSONTokenizer")
    assert (tok.eos_id, tok.add_eos, tok.vocab_size) == (
        first["tokenizer"]["eos_id"],
        True,
        first["tokenizer"]["vocab_size"],
    )
    [(ids, _)] = _documents(out)
    assert tok.encode_batch(["Why?\nBecause."])[0][0].tolist() == ids[:-1].tolist()
    assert main(["inspect", str(out), "--decode", "1"]) == 0
    assert "Because.<|endoftext|>" in capsys.readouterr().out


def test_prepare_with_an_hf_tokenizer_is_reproducible(chat, tmp_path, write_jsonl):
    src = [write_jsonl([{"messages": CONVERSATION}]), write_jsonl([{"text": "x = 1"}], "t.jsonl")]
    for name in ("a", "b"):
        gristmill.prepare(src, tmp_path / name, tokenizer=f"hf:{chat.chatml}")
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


# --- errors --------------------------------------------------------------------------------------


def test_text_that_is_not_unicode_is_located(toks, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*not valid Unicode"):
        gristmill.prepare(src, tmp_path / "a", tokenizer=f"hf:{toks.chatml}")
    manifest = gristmill.prepare(src, tmp_path / "b", tokenizer=str(toks.bpe_json), on_error="skip")
    assert manifest["provenance"]["skipped"] == {"untokenizable": 1}


def test_bad_specs_are_clear(toks, tmp_path, monkeypatch):
    from gristmill_hf_tokenizers.common import TokenizerLoadError

    with pytest.raises(TokenizerLoadError, match="name a tokenizer"):
        _open("hf:")
    with pytest.raises(TokenizerLoadError, match="no such folder"):
        _open(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(TokenizerLoadError, match="for a tokenizers JSON file pass its path"):
        _open(f"hf:{toks.bpe_json}")
    with pytest.raises(TokenizerLoadError, match="no such file"):
        _open(tmp_path / "tokenizer.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="not a tokenizers JSON file"):
        _open(tmp_path / "broken" / "tokenizer.json")
    with pytest.raises(TokenizerLoadError, match="cannot load the tokenizer"):
        _open(f"hf:{tmp_path / 'broken'}")
    import transformers

    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        lambda *args, **kwargs: types.SimpleNamespace(is_fast=False),
    )
    with pytest.raises(TokenizerLoadError, match="no fast"):
        _open(f"hf:{_only_transformers_loads(toks.chatml, tmp_path / 'slow')}")


def _only_transformers_loads(folder: Path, copy: Path) -> Path:
    """A copy of ``folder`` that names a model-specific tokenizer class: transformers loads it."""
    shutil.copytree(folder, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2TokenizerFast"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("library", ["transformers", "tokenizers"])
def test_a_missing_library_names_the_extra(tmp_path, monkeypatch, write_jsonl, capsys, library):
    # Works whether or not the library is installed (the `min` test env has neither).
    monkeypatch.setitem(sys.modules, library, None)
    (tmp_path / "tok").mkdir()
    # A folder with a tokenizer.json needs no transformers; one without needs it to convert.
    name = "tokenizer.json" if library == "tokenizers" else "vocab.txt"
    (tmp_path / "tok" / name).write_text("{}")
    spec = (
        f"hf:{tmp_path / 'tok'}"
        if library == "transformers"
        else str(tmp_path / "tok" / "tokenizer.json")
    )
    with pytest.raises(
        MissingDependencyError, match=r"needs the .* package: pip install 'gristmill\[hf\]'"
    ):
        gristmill.prepare(write_jsonl([{"text": "x"}]), tmp_path / "out", tokenizer=spec)
    assert not (tmp_path / "out").exists()
    code = main(
        ["prepare", str(tmp_path / "data.jsonl"), "-o", str(tmp_path / "o"), "--tokenizer", spec]
    )
    assert code == 2
    assert "pip install 'gristmill[hf]'" in capsys.readouterr().err


def _prepare_offline(tmp_path: Path, spec: str, *, offline_flag: bool, hf_home: Path):
    """Run ``gristmill prepare`` in a process that cannot reach the Hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(hf_home))
    if offline_flag:
        env["HF_HUB_OFFLINE"] = "1"
    src = tmp_path / "offline.jsonl"
    src.write_text('{"text": "x"}\n', encoding="utf-8")
    out = tmp_path / "o"
    shutil.rmtree(out, ignore_errors=True)
    args = ["prepare", str(src), "-o", str(out), "--tokenizer", spec]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gristmill.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert time.monotonic() - started < 60  # no retries against a dead endpoint
    return result, out


@pytest.mark.parametrize("offline_flag", [False, True])
def test_a_hub_name_without_network_fails_at_once(tmp_path, offline_flag):
    pytest.importorskip("transformers")
    result, out = _prepare_offline(
        tmp_path,
        "hf:gristmill-tests/no-such-tokenizer",
        offline_flag=offline_flag,
        hf_home=tmp_path / "hf-home",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    expected = "HF_HUB_OFFLINE is set" if offline_flag else "gristmill looks offline"
    assert expected in result.stderr
    assert "--tokenizer hf:DIR" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("offline_flag", [False, True])
def test_a_hub_name_in_the_local_cache_works_offline(toks, tmp_path, offline_flag):
    # The Hugging Face cache layout: refs/main names a snapshot holding the files; .no_exist
    # records files the repository does not have (this one has no config.json).
    repo = tmp_path / "hf-home" / "hub" / "models--gristmill-tests--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(toks.chatml, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / ".no_exist" / commit).mkdir(parents=True)
    (repo / ".no_exist" / commit / "config.json").touch()
    result, out = _prepare_offline(
        tmp_path,
        "hf:gristmill-tests/cached",
        offline_flag=offline_flag,
        hf_home=tmp_path / "hf-home",
    )
    assert result.returncode == 0, result.stderr
    assert ("using the cached copy" in result.stderr) is not offline_flag
    assert gristmill.open_dataset(out).tokenizer.decode(_documents(out)[0][0]) == "x<|endoftext|>"
