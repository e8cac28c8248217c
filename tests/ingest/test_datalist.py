"""Data-list files: a YAML or JSON file naming several files or folders, each with an optional
sampling ratio and format, usable wherever a source is (Python, the command line, a config
file); the ratio's choice rests on content alone and is counted; errors name the list and entry."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.config import from_config
from gristmill.errors import DataError, MissingDependencyError, UnknownComponentError
from gristmill.ingest.sources import open_sources, with_preset_defaults
from gristmill.options import PrepareOptions
from gristmill.plugin.components import PresetType
from gristmill.plugin.manager import PluginManager, get_manager
from tests.helpers import run_gristmill, tree_bytes

WEB = [{"text": f"web page {i}"} for i in range(1000)]
QA = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(10)]
NOTES = [{"text": f"note {i}"} for i in range(5)]
HAS_YAML = importlib.util.find_spec("yaml") is not None
needs_yaml = pytest.mark.skipif(not HAS_YAML, reason="YAML data lists need PyYAML (the yaml extra)")


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """``data/``: a folder of web pages, a QA file and notes in a file without a known suffix,
    and ``data/mix.yaml`` listing them."""
    root = tmp_path / "data"
    _write(root / "web" / "a.jsonl", WEB[:600])
    _write(root / "web" / "b.jsonl", WEB[600:])
    _write(root / "qa.jsonl", QA)
    _write(root / "notes.dat", NOTES)
    (root / "mix.yaml").write_text(
        "# the run's data\n"
        "- path: web/\n"
        "  ratio: 0.5\n"
        "- path: qa.jsonl\n"
        "  ratio: 2\n"
        "- {path: notes.dat, format: jsonl}\n"
    )
    return root


def _documents(directory: Path) -> list[str]:
    dataset = gristmill.open_dataset(directory)
    docs = dataset.documents
    return [dataset.tokenizer.decode(docs.document(i)[0]) for i in range(docs.num_documents)]


def _web_kept(directory: Path) -> set[str]:
    return {d.removesuffix("<|endoftext|>") for d in _documents(directory) if d.startswith("web")}


@needs_yaml
def test_a_yaml_list_reads_each_entry_at_its_ratio(corpus, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="gristmill"):
        manifest = gristmill.prepare(corpus / "mix.yaml", tmp_path / "out", progress=False)
    sources = manifest["provenance"]["sources"]
    assert [s["spec"] for s in sources] == [
        str(corpus / "web" / "a.jsonl"),
        str(corpus / "web" / "b.jsonl"),
        str(corpus / "qa.jsonl"),
        str(corpus / "notes.dat"),
    ]
    assert [(s.get("entry"), s.get("ratio")) for s in sources] == [
        (1, 0.5),
        (1, 0.5),
        (2, 2.0),
        (None, None),
    ]
    assert all(s["list"] == str(corpus / "mix.yaml") for s in sources[:3])
    kept = sources[0]["records"] + sources[1]["records"]
    assert 400 < kept < 600  # half of 1,000, chosen by content
    assert manifest["provenance"]["passed_over"] == {"ratio": len(WEB) - kept}
    assert sources[2]["records"] == 2 * len(QA)  # each record twice
    assert sources[3]["records"] == len(NOTES)  # read as JSON Lines, as its format says
    assert f"{corpus / 'mix.yaml'}: entry 2 ({corpus / 'qa.jsonl'}) at ratio 2: 20 documents" in (
        caplog.text
    )
    documents = _documents(tmp_path / "out")
    assert sum("q3?" in document for document in documents) == 2


@needs_yaml
def test_a_ratio_keeps_the_same_records_whatever_the_order_cut_or_company(corpus, tmp_path):
    gristmill.prepare(corpus / "mix.yaml", tmp_path / "one", progress=False, workers=1)
    chosen = _web_kept(tmp_path / "one")
    gristmill.prepare(
        corpus / "mix.yaml", tmp_path / "two", progress=False, workers=2, task_bytes=4000
    )
    assert _web_kept(tmp_path / "two") == chosen
    # The records in another order and among others: each kept or not by its content alone.
    other = tmp_path / "other"
    _write(other / "web.jsonl", [{"text": "another page"}, *reversed(WEB)])
    (other / "list.yaml").write_text("- {path: web.jsonl, ratio: 0.5}\n")
    gristmill.prepare(other / "list.yaml", tmp_path / "three", progress=False)
    assert _web_kept(tmp_path / "three") == chosen


@needs_yaml
def test_workers_write_the_same_bytes(corpus, tmp_path):
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        gristmill.prepare(
            corpus / "mix.yaml", out, workers=workers, task_bytes=4000, progress=False
        )
        outputs.append(tree_bytes(out))
    assert outputs[0] == outputs[1]


def test_a_json_list_is_named_with_list_and_a_json_file_alone_holds_records(corpus, tmp_path):
    entries = [{"path": "web/a.jsonl"}, {"path": "qa.jsonl", "ratio": 1}]
    (corpus / "mix.json").write_text(json.dumps({"datasets": entries}))
    manifest = gristmill.prepare(f"list:{corpus / 'mix.json'}", tmp_path / "l", progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 600 + len(QA)
    # The same file named alone is a JSON source: its one record has no text.
    with pytest.raises(DataError, match="cannot tell the format of records with keys"):
        gristmill.prepare(corpus / "mix.json", tmp_path / "j", progress=False)


@needs_yaml
def test_paths_are_relative_to_the_list_not_to_the_working_directory(corpus, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sources = open_sources([str(corpus / "mix.yaml")], get_manager())
    assert [s.spec for s in sources][-1] == str(corpus / "notes.dat")


@needs_yaml
def test_a_stream_reads_the_list_as_prepare_does(corpus, tmp_path):
    gristmill.prepare(corpus / "mix.yaml", tmp_path / "out", progress=False)
    stream = gristmill.stream(corpus / "mix.yaml", seq_len=512, packer="none")
    served = [s for s in stream]
    assert len(served) == len(_documents(tmp_path / "out"))
    assert stream.stats.documents == len(served)


@needs_yaml
def test_the_command_line_and_a_config_file_take_a_list(corpus, tmp_path):
    result = run_gristmill("prepare", str(corpus / "mix.yaml"), "-o", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "at ratio 0.5" in result.stderr
    config = tmp_path / "run.toml"
    config.write_text(
        f'[prepare]\nsources = "{corpus / "mix.yaml"}"\noutput = "{tmp_path / "cfg"}"\n'
    )
    manifest = from_config(config).prepare(progress=False)
    assert (
        manifest["splits"] == json.loads((tmp_path / "cli" / "manifest.json").read_text())["splits"]
    )


@needs_yaml
def test_dedup_is_refused_beside_a_ratio_that_repeats(corpus, tmp_path):
    with pytest.raises(DataError, match="ratio above 1 repeats records, which dedup would drop"):
        gristmill.prepare(corpus / "mix.yaml", tmp_path / "o", dedup=True, progress=False)


@needs_yaml
@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- path: missing.jsonl\n", r"entry 1 \(missing.jsonl\): source .* not found"),
        (
            "- web/\n- {path: qa.jsonl, ratio: 0}\n",
            r"entry 2 \(qa.jsonl\): ratio must be a positive",
        ),
        ("- {path: qa.jsonl, ratio: half}\n", r"entry 1 \(qa.jsonl\): ratio must be a positive"),
        (
            "- {path: qa.jsonl, ratoi: 2}\n",
            r"entry 1 \(qa.jsonl\): no key 'ratoi': did you mean ratio\?",
        ),
        ("- {ratio: 2}\n", r"entry 1: path must name"),
        ("- [qa.jsonl]\n", r"entry 1: expected a path or a mapping"),
        ("- mix.yaml\n", r"entry 1 \(mix.yaml\): .* a data list cannot name another one"),
        (
            "- {path: 'sample:stdlib', format: jsonl}\n",
            r"entry 1 .*: format names the source of files",
        ),
        ("web: web/\n", r"a data list is a list of entries, or a mapping with one key"),
        ("[]\n", r"a data list is a non-empty list of entries"),
        ("- {path: [unclosed\n", r"not valid YAML"),
    ],
)
def test_mistakes_name_the_list_and_the_entry(corpus, tmp_path, text, says):
    listed = corpus / "mix.yaml"
    listed.write_text(text)
    with pytest.raises(DataError, match=says) as caught:
        gristmill.prepare(listed, tmp_path / "o", progress=False)
    assert str(caught.value).startswith(str(listed))
    assert not (tmp_path / "o").exists()  # refused before the output was touched


@needs_yaml
def test_an_unknown_format_lists_the_sources(corpus, tmp_path):
    (corpus / "mix.yaml").write_text("- {path: notes.dat, format: jsnol}\n")
    with pytest.raises(UnknownComponentError, match=r"mix.yaml: entry 1 \(notes.dat\): .*jsonl"):
        gristmill.prepare(corpus / "mix.yaml", tmp_path / "o", progress=False)


@needs_yaml
def test_a_folder_with_a_format_reads_every_file_in_it(tmp_path):
    folder = tmp_path / "logs"
    _write(folder / "day1.log", NOTES[:2])
    _write(folder / "day2.log", NOTES[2:])
    (folder / ".hidden").write_text("not a record\n")
    (tmp_path / "list.yml").write_text("- {path: logs, format: jsonl}\n")
    sources = open_sources([str(tmp_path / "list.yml")], get_manager())
    assert [os.path.basename(s.spec) for s in sources] == ["day1.log", "day2.log"]


class _NotesPreset:
    """A preset over a local file, with a tokenizer other than the default."""

    def __init__(self, path: Path):
        self.path = path

    @hookimpl
    def gristmill_presets(self) -> list[PresetType]:
        return [
            PresetType(name="notes", description="d", source=str(self.path), tokenizer="hf:DIR")
        ]


@needs_yaml
def test_a_list_may_name_a_preset_whose_defaults_the_run_takes(corpus, tmp_path, caplog):
    manager = PluginManager()
    manager.register(_NotesPreset(corpus / "qa.jsonl"), "notes-preset")
    (corpus / "mix.yaml").write_text("- notes\n- {path: web/a.jsonl, ratio: 0.1}\n")
    assert with_preset_defaults(
        PrepareOptions(), [str(corpus / "mix.yaml")], manager
    ).tokenizer == ("hf:DIR")
    with caplog.at_level(logging.INFO, logger="gristmill"):
        sources = open_sources([str(corpus / "mix.yaml")], manager)
    assert f"{corpus / 'mix.yaml'}: entry 1 (notes): no such local path; reading preset:notes" in (
        caplog.text
    )
    assert [s.spec for s in sources] == [str(corpus / "qa.jsonl"), str(corpus / "web" / "a.jsonl")]


@pytest.mark.skipif(HAS_YAML, reason="PyYAML is installed here: the YAML lists are read")
def test_a_yaml_list_without_pyyaml_says_how_to_get_it(corpus, tmp_path):
    with pytest.raises(
        MissingDependencyError, match=r"mix.yaml: reading a YAML data list needs PyYAML"
    ):
        gristmill.prepare(corpus / "mix.yaml", tmp_path / "o", progress=False)
