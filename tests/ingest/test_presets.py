"""Presets resolved by gristmill itself: a preset names any source spec, its tokenizer and text
field are the defaults of a run that does not give its own, and the plugin manager a caller
passes is the one that resolves it (never the process-wide one)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.errors import (
    DataError,
    GristmillError,
    OptionError,
    PluginError,
    UnknownComponentError,
)
from gristmill.ingest.sources import named_spec, open_sources, with_preset_defaults
from gristmill.options import PrepareOptions, StreamOptions
from gristmill.plugin.components import PresetType, TokenizerType
from gristmill.plugin.manager import PluginManager, get_manager
from gristmill.store.convert import convert
from gristmill_byte import BOS, ByteTokenizer
from tests.helpers import run_gristmill

RECORDS = [{"title": f"title {i}", "body": f"body of note {i}"} for i in range(5)]


def _bos_byte(spec: str, **context: object) -> ByteTokenizer:
    return ByteTokenizer(add_bos=True)


class Notes:
    """Presets over a local JSON Lines file whose text is in ``body``, with a tokenizer that
    differs from the default (``byte`` with a BOS before every document)."""

    def __init__(self, path: Path, **more: PresetType):
        self.path = path
        self.more = list(more.values())

    @hookimpl
    def gristmill_presets(self) -> list[PresetType]:
        notes = PresetType(
            name="notes",
            description="notes, their text in body",
            source=str(self.path),
            text_field="body",
            tokenizer="bos-byte",
        )
        return [notes, *self.more]

    @hookimpl
    def gristmill_tokenizers(self) -> list[TokenizerType]:
        return [
            TokenizerType(
                name="bos-byte", description="bytes, BOS first", factory=_bos_byte, load=_bos_load
            )
        ]


def _bos_load(directory: Path, config: dict, **context: object) -> ByteTokenizer:
    return ByteTokenizer.load(directory, config)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def _manager(plugin: object) -> PluginManager:
    manager = PluginManager()
    manager.register(plugin, "notes-plugin")
    assert "notes" not in get_manager().components(PresetType)  # only this manager knows it
    return manager


def _texts(directory: Path, manager: PluginManager) -> tuple[str, list[str]]:
    dataset = gristmill.open_dataset(directory, manager=manager)
    documents = [dataset.documents.document(i)[0] for i in range(dataset.documents.num_documents)]
    assert all(ids[0] == BOS for ids in documents) == (dataset.tokenizer.add_bos is True)
    return dataset.manifest["tokenizer"]["name"], [dataset.tokenizer.decode(d) for d in documents]


def test_a_preset_of_local_files_applies_its_tokenizer_and_text_field(notes, tmp_path):
    manager = _manager(Notes(notes))
    gristmill.prepare("preset:notes", tmp_path / "out", workers=1, progress=False, manager=manager)
    family, texts = _texts(tmp_path / "out", manager)
    assert family == "bos-byte"
    assert texts == [f"<|bos|>{r['body']}<|endoftext|>" for r in RECORDS]


def test_what_the_user_gives_wins_over_the_presets_defaults(notes, tmp_path):
    manager = _manager(Notes(notes))
    out = tmp_path / "out"
    gristmill.prepare(
        ["preset:notes"],
        out,
        tokenizer="byte",
        fields={"text": "title"},
        workers=1,
        progress=False,
        manager=manager,
    )
    family, texts = _texts(out, manager)
    assert family == "byte"
    assert texts == [f"{r['title']}<|endoftext|>" for r in RECORDS]


def test_a_stream_of_a_preset_applies_its_defaults(notes):
    manager = _manager(Notes(notes))
    stream = gristmill.stream("preset:notes", seq_len=64, packer="none", manager=manager)
    first = next(iter(stream))
    assert first["input_ids"][0] == BOS
    assert bytes(first["input_ids"][1:-1].tolist()).decode() == RECORDS[0]["body"]


def test_convert_reads_a_presets_text_field(notes, tmp_path):
    manager = _manager(Notes(notes))
    out = tmp_path / "notes-converted.jsonl"
    convert("preset:notes", out, manager=manager)
    converted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in converted] == [r["body"] for r in RECORDS]


def test_presets_that_disagree_need_the_setting_given(notes, tmp_path):
    other = PresetType(name="other", description="d", source=str(notes), tokenizer="byte")
    manager = _manager(Notes(notes, other=other))
    both = ["preset:notes", "preset:other"]
    with pytest.raises(DataError, match=r"disagree on the tokenizer .*: give it yourself"):
        gristmill.prepare(both, tmp_path / "a", workers=1, progress=False, manager=manager)
    gristmill.prepare(
        both, tmp_path / "b", tokenizer="byte", workers=1, progress=False, manager=manager
    )
    assert _texts(tmp_path / "b", manager)[1] == 2 * [f"{r['body']}<|endoftext|>" for r in RECORDS]


def test_a_preset_opens_its_source_with_its_options_under_the_users(notes):
    downloaded = PresetType(name="local", description="d", source=str(notes), streaming=False)
    manager = _manager(Notes(notes, local=downloaded))
    # jsonl declares no `streaming` option: the preset's is refused as a user's would be.
    with pytest.raises(OptionError, match="source 'jsonl' has no option 'streaming'"):
        open_sources(["preset:local"], manager)
    [source] = open_sources(["preset:notes"], manager)
    assert source.spec == str(notes)


def test_a_preset_naming_a_preset_is_refused_when_registered(notes):
    loop = PresetType(name="loop", description="d", source="preset:notes")
    with pytest.raises(PluginError, match="preset 'loop' names another preset"):
        _manager(Notes(notes, loop=loop))


def test_an_unknown_preset_lists_the_presets_there_are(notes):
    manager = _manager(Notes(notes))
    with pytest.raises(UnknownComponentError, match=r"no preset named 'nope'; available: .*notes"):
        open_sources(["preset:nope"], manager)


# --- names as users write them, and the tokenizer a preset chooses --------------------------------


def test_preset_names_as_guides_write_them():
    manager = get_manager()
    presets = manager.components(PresetType)
    assert named_spec("pile", manager) == "preset:pile"
    assert presets["pile"].source == presets["the-pile"].source
    assert presets["pile"].tokenizer == presets["the-pile"].tokenizer
    assert named_spec("tiny_shakespeare", manager) == "preset:tiny-shakespeare"
    # shakespeare: the complete works, one row per line, not Tiny Shakespeare again.
    assert presets["shakespeare"].source != presets["tiny-shakespeare"].source
    assert "complete works" in presets["shakespeare"].description
    assert "line by line" in presets["shakespeare"].description


def test_a_bare_preset_name_is_read_unless_a_local_path_is_there(notes, tmp_path, monkeypatch):
    manager = _manager(Notes(notes))
    monkeypatch.chdir(tmp_path)
    gristmill.prepare("notes", tmp_path / "out", workers=1, progress=False, manager=manager)
    assert _texts(tmp_path / "out", manager)[0] == "bos-byte"  # the preset's tokenizer
    (tmp_path / "notes").mkdir()  # a local path always wins: here, an empty folder
    with pytest.raises(DataError, match="the directory 'notes' holds no file"):
        gristmill.prepare("notes", tmp_path / "o2", progress=False, manager=manager)


def test_a_presets_tokenizer_is_the_runs_unless_one_is_given():
    manager = get_manager()
    for options in (PrepareOptions(), StreamOptions()):
        assert with_preset_defaults(options, "preset:fineweb-edu", manager).tokenizer == "hf:gpt2"
        assert with_preset_defaults(options, ["fineweb-edu"], manager).tokenizer == "hf:gpt2"
        given = dataclasses.replace(options, tokenizer="byte")
        assert with_preset_defaults(given, "preset:fineweb-edu", manager).tokenizer == "byte"
    assert with_preset_defaults(PrepareOptions(), "tiny_shakespeare", manager).tokenizer == "byte"


def test_a_presets_tokenizer_offline_fails_at_once_saying_how_to_give_another(
    notes, tmp_path, monkeypatch
):
    pytest.importorskip("transformers", reason="hf: tokenizers need transformers")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = PresetType(
        name="offline-notes",
        description="d",
        source=str(notes),
        text_field="body",
        tokenizer="hf:gristmill-tests/not-in-any-cache",
    )
    manager = _manager(Notes(notes, offline=offline))
    start = time.monotonic()
    for run in (
        lambda: gristmill.prepare("preset:offline-notes", tmp_path / "o", manager=manager),
        lambda: gristmill.stream("offline-notes", seq_len=64, manager=manager),
    ):
        with pytest.raises(GristmillError) as caught:
            run()
        says = str(caught.value)
        assert "not in the local Hugging Face cache" in says
        assert "the tokenizer preset:offline-notes uses when none is given; --tokenizer" in says
    assert time.monotonic() - start < 30
    assert not (tmp_path / "o").exists()
    served = gristmill.stream("offline-notes", seq_len=64, tokenizer="byte", manager=manager)
    assert sum(len(sample["seq_lens"]) for sample in served) == len(RECORDS)


@pytest.mark.parametrize("name", ["pile", "tiny_shakespeare", "shakespeare"])
def test_the_cli_reads_preset_names_as_guides_write_them(name, tmp_path):
    result = run_gristmill(
        "prepare",
        name,
        "-o",
        str(tmp_path / "o"),
        env={
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 2
    source = get_manager().get(PresetType, name).source
    assert f"{name}: no such local path; reading preset:" in result.stderr
    if importlib.util.find_spec("datasets") is None:  # the minimal envs: the Hub needs the extra
        assert (
            f"{source}: reading Hugging Face datasets needs the datasets package" in result.stderr
        )
    else:
        assert f"{source}: cannot load" in result.stderr
