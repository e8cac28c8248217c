"""``hf:FOLDER`` read without transformers: the same tokenizer, template and fingerprint.

gristmill reads a transformers tokenizer folder with ``tokenizers`` and the JSON configs
(gristmill_hf_tokenizers.pretrained) and renders its chat template in jinja2's sandbox
(gristmill_hf_tokenizers.template). These tests check both against transformers itself, on
folders of many shapes built here (nothing is downloaded), and that loading imports neither
transformers nor torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.errors import GristmillError
from gristmill.ingest.tokenizers import resolve_tokenizer
from gristmill.plugin.manager import get_manager
from gristmill_sample import stdlib_modules
from tests.helpers import train_bpe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<s>", "</s>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama 3's shape: the BOS written by the template, headers, trimmed contents.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
# Qwen 2.5's shape: a system turn of its own when the conversation has none.
SYSTEM_DEFAULT = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
# The environment's extras: namespace, loop controls, tojson, dict, strftime_now, the
# generation tag, raise_exception, and trim_blocks/lstrip_blocks on indented blocks.
FEATURES = textwrap.dedent(
    """\
    {% set ns = namespace(n=0) %}
    {% for m in messages %}
      {% if m.role == 'system' %}{% continue %}{% endif %}
      {% set ns.n = ns.n + 1 %}
      [{{ ns.n }}] {{ m.role }}: {{ m.content | tojson }}
      {% if m.role == 'assistant' %}
    {% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}
      {% elif m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}
      {% if ns.n > 5 %}{% break %}{% endif %}
    {% endfor %}
    {{ dict(a=1, b=[1, 'é']) | tojson }} {{ strftime_now('%Y') }}
    {% if add_generation_prompt %}assistant:{% endif %}
    """
)
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "system": SYSTEM_DEFAULT, "features": FEATURES}
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "  What does json.loads return for '[]'?  "},
        {"role": "assistant", "content": "A list."},
        {"role": "user", "content": 'And for "{}"? Σ ✓ <tag>'},
        {"role": "assistant", "content": "A dict."},
    ],
    [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}],
]
LLAMA2 = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
TEMPLATES["llama2"] = LLAMA2
PROBES = ["Hello <|im_end|> <s> </s> Ġthe <new> <img> x<pad>y", "plain  text\n\n with  spaces"]


def _transformers_major() -> int | None:
    try:
        return int(version("transformers").split(".")[0])
    except PackageNotFoundError:
        return None


# gristmill reads folders as transformers 5 loads them, and leaves them all to transformers 4.
reads_folders = pytest.mark.skipif(
    (_transformers_major() or 5) < 5,
    reason="transformers 4 is installed: gristmill leaves every folder to it",
)


def _added(content: str, **flags: bool) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
        **flags,
    }


# Edits to a folder saved by transformers' save_pretrained: (tokenizer_config.json edit,
# files to write (None: delete), tokenizer.json edit).
def _no_post_processor(j: dict) -> None:
    j["post_processor"] = None


def _truncating(j: dict) -> None:
    j["truncation"] = {
        "direction": "Right",
        "max_length": 2,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    j["padding"] = {
        "strategy": {"Fixed": 9},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 3,
        "pad_type_id": 0,
        "pad_token": "<pad>",
    }


def _bos_first(j: dict) -> None:
    bos = {"SpecialToken": {"id": "<s>", "type_id": 0}}
    j["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [4], "tokens": ["<s>"]}},
    }


def _no_added_tokens(j: dict) -> None:
    j["added_tokens"] = []


LEGACY_MAP = {
    "bos_token": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False},
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    "image_token": "<img>",
}
V4_DECODER = {str(i): _added(c, special=c != "<|im_end|>") for i, c in enumerate(SPECIALS)}
SHAPES = {
    "saved": ({}, {}, None),
    "no class": ({"tokenizer_class": None}, {}, None),
    "no config": (None, {}, None),
    "model config": (
        {"tokenizer_class": "PreTrainedTokenizerFast"},
        {"config.json": '{"model_type": "llama"}'},
        None,
    ),
    "no post-processor": ({}, {}, _no_post_processor),
    "truncation and padding": ({}, {}, _truncating),
    "specials not added yet": (
        {"eos_token": "Ġthe", "bos_token": "<new>", "unk_token": "<unk>"},
        {},
        None,
    ),
    "no added tokens": ({"eos_token": "<new>", "bos_token": "<new>"}, {}, _no_added_tokens),
    "added tokens decoder": (
        {
            "added_tokens_decoder": {
                "0": _added("<|endoftext|>"),
                "2000": _added("<new>", lstrip=True, special=False),
            }
        },
        {},
        None,
    ),
    "v4 style": (
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": True,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "added_tokens_decoder": V4_DECODER,
            "chat_template": LLAMA3,
            "clean_up_tokenization_spaces": True,
        },
        {"chat_template.jinja": None, "special_tokens_map.json": json.dumps(LEGACY_MAP)},
        _bos_first,
    ),
    "special tokens map": ({}, {"special_tokens_map.json": json.dumps(LEGACY_MAP)}, None),
    "model's own tokens": (
        {
            "extra_special_tokens": ["<x1>", "<|im_end|>"],
            "additional_special_tokens": ["<y>"],
            "image_token": "<img>",
            "audio_token": {"__type": "AddedToken", **_added("<aud>")},
        },
        {},
        None,
    ),
    "extra tokens by name": ({"extra_special_tokens": {"video_token": "<vid>"}}, {}, None),
    "split special tokens": ({"split_special_tokens": True}, {}, None),
    "template in config": ({"chat_template": LLAMA3}, {"chat_template.jinja": None}, None),
    "named templates in config": (
        {
            "chat_template": [
                {"name": "default", "template": CHATML},
                {"name": "tool_use", "template": "T"},
            ]
        },
        {"chat_template.jinja": None},
        None,
    ),
    "named template files": (
        {},
        {
            "additional_chat_templates/tool_use.jinja": "T",
            "additional_chat_templates/rag.jinja": "R",
        },
        None,
    ),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A byte-level BPE saved by transformers' save_pretrained, with a ChatML template."""
    pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    _, files = stdlib_modules()
    corpus = [p.read_text(encoding="utf-8") for p in files[:40]]
    bpe = train_bpe(corpus, vocab_size=1200, specials=SPECIALS)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    folder = tmp_path_factory.mktemp("hf") / "saved"
    PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>", chat_template=CHATML
    ).save_pretrained(str(folder))
    return folder


def _shape(base: Path, root: Path, name: str) -> Path:
    config_edit, files, json_edit = SHAPES[name]
    folder = root / name.replace(" ", "-").replace("'", "")
    shutil.copytree(base, folder)
    config_path = folder / "tokenizer_config.json"
    if config_edit is None:
        config_path.unlink()
    else:
        config = json.loads(config_path.read_text())
        config.update(config_edit)
        config = {k: v for k, v in config.items() if v is not None}
        config_path.write_text(json.dumps(config))
    if json_edit is not None:
        data = json.loads((folder / "tokenizer.json").read_text())
        json_edit(data)
        (folder / "tokenizer.json").write_text(json.dumps(data))
    for path, text in files.items():
        if text is None:
            (folder / path).unlink()
        else:
            (folder / path).parent.mkdir(exist_ok=True)
            (folder / path).write_text(text)
    return folder


def _reference(folder: Path):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    hf("x", add_special_tokens=False, verbose=False)  # its first call stops cutting and padding
    return hf


def _open(spec: str):
    return resolve_tokenizer(spec, get_manager()).factory(spec)


@reads_folders
@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_folder_reads_as_transformers_loads_it(base, tmp_path, shape):
    from gristmill_hf_tokenizers import pretrained

    folder = _shape(base, tmp_path, shape)
    hf = _reference(folder)
    ours = pretrained.read(f"hf:{folder}", folder)
    assert ours.backend.to_str() == hf.backend_tokenizer.to_str()
    assert repr(ours.chat_template) == repr(hf.chat_template)
    assert ours.special_tokens == hf.special_tokens_map
    assert ours.declared == {"bos": hf.bos_token_id, "eos": hf.eos_token_id, "pad": hf.pad_token_id}
    for flag in (False, True):
        got = [e.ids for e in ours.backend.encode_batch(PROBES, add_special_tokens=flag)]
        assert got == hf(PROBES, add_special_tokens=flag)["input_ids"]


@pytest.mark.parametrize("shape", ["saved", "v4 style", "specials not added yet", "no class"])
def test_the_tokenizer_and_its_fingerprint_are_transformers_own(base, tmp_path, shape):
    """What gristmill computed from the transformers tokenizer before reads the same now."""
    from gristmill_hf_tokenizers.common import PROBE_TEXT, detect_specials, digest

    folder = _shape(base, tmp_path, shape)
    hf = _reference(folder)
    tok = _open(f"hf:{folder}")
    plain, full = (hf(PROBE_TEXT, add_special_tokens=f)["input_ids"] for f in (False, True))
    specials = detect_specials(
        "x",
        plain,
        full,
        hf.get_vocab(),
        bos=hf.bos_token_id,
        eos=hf.eos_token_id,
        pad=hf.pad_token_id,
    )
    assert tok.specials == specials
    assert tok.vocab_size == max(len(hf), max(hf.get_vocab().values()) + 1)
    expected = digest(
        hf.backend_tokenizer.to_str(), repr(hf.chat_template), repr(specials.as_config())
    )
    assert tok.fingerprint() == expected
    ids, offsets = tok.encode_batch(PROBES, offsets=True)
    reference = hf(PROBES, add_special_tokens=False, return_offsets_mapping=True)
    assert [a.tolist() for a in ids] == reference["input_ids"]
    assert [a.tolist() for a in offsets] == [
        [s for s, _ in doc] for doc in reference["offset_mapping"]
    ]
    assert tok.decode(ids[0]) == hf.decode(
        reference["input_ids"][0], clean_up_tokenization_spaces=False
    )


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_templates_render_as_transformers_renders_them(base, tmp_path, name):
    from transformers import PreTrainedTokenizerFast

    from gristmill_hf_tokenizers import template

    folder = tmp_path / name
    shutil.copytree(base, folder)
    (folder / "chat_template.jinja").write_text(TEMPLATES[name])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(bos_token="<s>", eos_token="</s>")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    hf = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = _open(f"hf:{folder}")
    source = template.pick(tok.pretrained.chat_template)
    for conversation in CONVERSATIONS:
        for prompt in (False, True):
            ours = template.render(source, conversation, prompt, tok.pretrained.special_tokens)
            assert ours == hf.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=prompt
            )


def test_prepare_with_two_workers_gives_transformers_ids_and_masks(base, tmp_path, write_jsonl):
    hf = _reference(base)
    conversation = CONVERSATIONS[1]
    records = [{"messages": conversation}, {"text": "x = 1\n<|im_end|>"}]
    sources = [write_jsonl(records[:1], "chat.jsonl"), write_jsonl(records[1:], "text.jsonl")]
    out = tmp_path / "out"
    manifest = gristmill.prepare(
        sources, out, tokenizer=f"hf:{base}", workers=2, task_bytes=64, progress=False
    )
    assert manifest["tokenizer"]["chat_template"] == "tokenizer"
    docs = gristmill.open_dataset(out).documents
    (chat_ids, mask), (text_ids, no_mask) = (docs.document(i) for i in range(2))
    eos = [hf.eos_token_id]
    rendered = hf.apply_chat_template(conversation, tokenize=False)
    assert chat_ids.tolist() == hf(rendered, add_special_tokens=False)["input_ids"] + eos
    assert text_ids.tolist() == hf(records[1]["text"], add_special_tokens=False)["input_ids"] + eos
    assert no_mask is None
    trained = hf.decode(chat_ids[mask.astype(bool)].tolist())
    assert trained == "A list.<|im_end|>\nA dict.<|im_end|>\n<|endoftext|>"


@reads_folders
def test_the_dataset_keeps_the_files_it_was_read_from(base, tmp_path, write_jsonl):
    folder = _shape(base, tmp_path, "v4 style")
    out = tmp_path / "out"
    gristmill.prepare(write_jsonl([{"text": "a b"}]), out, tokenizer=f"hf:{folder}")
    saved = out / "tokenizer"
    assert sorted(p.name for p in saved.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    for path in saved.iterdir():
        assert path.read_bytes() == (folder / path.name).read_bytes()
    first = _open(f"hf:{folder}")
    reloaded = gristmill.open_dataset(out).tokenizer
    assert reloaded.fingerprint() == first.fingerprint()
    assert type(reloaded).__name__ == "HFChatTokenizer"


def test_a_dataset_saved_by_transformers_still_loads(base, tmp_path):
    """Datasets prepared before keep the tokenizer as transformers' save_pretrained wrote it."""
    from gristmill_hf_tokenizers.hf import HFTokenizer

    first = _open(f"hf:{base}")
    saved = tmp_path / "tokenizer"
    _reference(base).save_pretrained(str(saved))
    loaded = HFTokenizer.load(saved, first.specials.as_config())
    assert loaded.fingerprint() == first.fingerprint()
    ids = [a.tolist() for a in loaded.encode_batch(PROBES)[0]]
    assert ids == [a.tolist() for a in first.encode_batch(PROBES)[0]]


@reads_folders
def test_a_folder_only_transformers_loads_says_why(base, tmp_path, write_jsonl, caplog):
    folder = tmp_path / "gpt2"
    shutil.copytree(base, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2TokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="gristmill"):
        tok = _open(f"hf:{folder}")
    assert "loaded with transformers: its tokenizer class is GPT2TokenizerFast" in caplog.text
    hf = _reference(folder)
    assert (
        tok.encode_batch(PROBES)[0][0].tolist()
        == hf(PROBES[0], add_special_tokens=False)["input_ids"]
    )
    out = tmp_path / "out"
    gristmill.prepare(write_jsonl([{"text": "a b"}]), out, tokenizer=f"hf:{folder}")
    assert gristmill.open_dataset(out).tokenizer.fingerprint() == tok.fingerprint()


@reads_folders
def test_the_model_types_transformers_rebuilds_are_left_to_it():
    pytest.importorskip("transformers")
    from transformers.models.auto import tokenization_auto as auto

    from gristmill_hf_tokenizers.pretrained import REBUILT_MODEL_TYPES

    generic = {None, "TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast"}
    rebuilt = {
        model_type
        for model_type in auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS
        if auto.TOKENIZER_MAPPING_NAMES.get(model_type) not in generic
    }
    assert rebuilt == REBUILT_MODEL_TYPES


# --- the sandbox ---------------------------------------------------------------------------------

REFUSED = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ (messages | first).__class__ }}",
    "{{ messages | attr('__class__') }}",
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set d = dict(a=1) %}{{ d.update(b=2) }}",
    "{% set ns = namespace() %}{% set ns._secret = 1 %}",
]


@pytest.mark.parametrize("source", REFUSED)
def test_a_template_that_reaches_python_internals_is_refused(base, tmp_path, write_jsonl, source):
    folder = tmp_path / "evil"
    shutil.copytree(base, folder)
    (folder / "chat_template.jinja").write_text(source)
    records = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ]
    # Not a record's fault: refused even where bad records are skipped.
    with pytest.raises(
        GristmillError, match=r"evil: its chat template was stopped by jinja2's sandbox"
    ) as info:
        gristmill.prepare(
            write_jsonl(records), tmp_path / "out", tokenizer=f"hf:{folder}", on_error="skip"
        )
    assert type(info.value).__name__ == "ChatTemplateRefused"
    assert "refused, not run" in str(info.value)


def test_a_refused_template_runs_nothing(base, tmp_path, write_jsonl):
    folder = tmp_path / "evil"
    shutil.copytree(base, folder)
    marker = tmp_path / "ran"
    (folder / "chat_template.jinja").write_text(
        "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    )
    records = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ]
    with pytest.raises(GristmillError, match="sandbox"):
        gristmill.prepare(write_jsonl(records), tmp_path / "out", tokenizer=f"hf:{folder}")
    assert not marker.exists()


# --- no transformers, no torch -------------------------------------------------------------------

# Stand-ins that record any import of transformers or torch, in every process (prepare's workers
# inherit the environment), then fail it.
STUB = "import os\nopen(os.environ['IMPORTED_LOG'], 'a').write(__name__ + '\\n')\nraise ImportError(__name__)\n"


@reads_folders
def test_hf_folders_load_and_prepare_without_transformers_or_torch(base, tmp_path, write_jsonl):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("transformers", "torch"):
        (stubs / f"{name}.py").write_text(STUB)
    log = tmp_path / "imported.log"
    log.touch()
    src = [
        write_jsonl([{"messages": CONVERSATIONS[1]}], "chat.jsonl"),
        write_jsonl([{"text": "x = 1"}]),
    ]
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""\
        import sys, gristmill
        gristmill.prepare({[str(p) for p in src]!r}, {str(out)!r}, tokenizer={f"hf:{base}"!r}, workers=2,
                          task_bytes=64, progress=False)
        tok = gristmill.open_dataset({str(out)!r}).tokenizer
        print(tok.decode(gristmill.open_dataset({str(out)!r}).documents.document(1)[0]))
        print(sorted(m for m in ("transformers", "torch") if m in sys.modules))
        """
    )
    env = {**os.environ, "IMPORTED_LOG": str(log)}
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["x = 1<|endoftext|>", "[]"]
    assert log.read_text() == ""
    expected = tmp_path / "expected"
    gristmill.prepare(
        src, expected, tokenizer=f"hf:{base}", workers=1, task_bytes=64, progress=False
    )
    got, want = (gristmill.open_dataset(d).documents for d in (out, expected))
    for i in range(2):
        (a, mask_a), (b, mask_b) = got.document(i), want.document(i)
        assert np.array_equal(a, b)
        assert (mask_a is None and mask_b is None) or np.array_equal(mask_a, mask_b)
