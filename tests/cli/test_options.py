"""Every option is checked: an options dict key that no component declares, and an integer
argument that is not a whole number, are refused at the call, never ignored or misread."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gristmill
from gristmill import hookimpl
from gristmill.cli import main
from gristmill.errors import GristmillError, OptionError, PluginError
from gristmill.plugin.components import ExporterType, PackerType
from gristmill.serve.dataset import Dataset
from gristmill.store.convert import convert


@pytest.fixture
def data(write_jsonl) -> Path:
    return write_jsonl([{"text": f"document {i} " + "x" * (i % 23)} for i in range(60)])


@pytest.fixture
def dataset(tmp_path, data) -> Path:
    out = tmp_path / "ds"
    gristmill.prepare([data], out, tokenizer="byte", progress=False)
    return out


def export_tokens(
    dataset: Dataset, directory: Path, *, progress: bool, compress: bool = False, **context: Any
) -> dict:
    """A real exporter with one option: the split's tokens as one .npy file."""
    docs = [dataset.documents.document(i)[0] for i in range(dataset.documents.num_documents)]
    np.save(directory / f"{dataset.split}.npy", np.concatenate(docs))
    return {"documents": len(docs), "compress": compress}


class TokensExporter:
    @hookimpl
    def gristmill_exporters(self) -> list[ExporterType]:
        return [
            ExporterType(
                name="tokens",
                description="one .npy of tokens per split",
                export=export_tokens,
                options={"compress": "store the file compressed"},
            )
        ]


# --- unknown option keys: refused with the closest valid name -------------------------------------


@pytest.mark.parametrize(
    "packer, options, says",
    [
        ("greedy-stream", {"buffer_sizee": 4}, "did you mean buffer_size?"),
        ("greedy-stream", {"qqq": 4}, r"\. It takes: buffer_size \(open samples"),
        ("concat-chunk", {"window": 16}, "takes no options"),
        ("none", {"bogus": 1}, "takes no options"),
    ],
)
def test_a_packer_refuses_an_option_it_does_not_declare(dataset, packer, options, says):
    with pytest.raises(OptionError, match=rf"packer {packer!r}.*{next(iter(options))}.*{says}"):
        gristmill.open_dataset(dataset, seq_len=64, packer=packer, packer_options=options)


def test_the_greedy_stream_typo_is_refused_by_stream_too(data):
    with pytest.raises(OptionError, match=r"buffer_sizee.*did you mean buffer_size"):
        gristmill.stream(data, seq_len=64, packer_options={"buffer_sizee": 4})


def test_a_declared_packer_option_still_works(dataset):
    ds = gristmill.open_dataset(
        dataset, seq_len=64, packer="greedy-stream", packer_options={"buffer_size": 2}
    )
    assert len(ds) > 0


def test_a_sampler_refuses_an_option_it_does_not_declare(dataset):
    pytest.importorskip("torch")
    from gristmill.torch import dataloader

    ds = gristmill.open_dataset(dataset, seq_len=64, packer="first-fit")
    with pytest.raises(OptionError, match=r"sampler 'distributed'.*shufle.*did you mean shuffle"):
        dataloader(ds, batch_size=2, sampler_options={"shufle": False})
    with pytest.raises(OptionError, match=r"sampler 'sequential'.*takes no options"):
        dataloader(ds, batch_size=2, sampler="sequential", sampler_options={"shuffle": False})
    mix = gristmill.mixture({"a": ds}, {"a": 1.0})
    with pytest.raises(OptionError, match=r"megabatchh.*did you mean megabatch"):
        dataloader(
            mix,
            batch_size=2,
            sampler="distributed-length-grouped",
            sampler_options={"megabatchh": 2},
        )


def test_a_tokenizer_refuses_an_option_it_does_not_declare(data, tmp_path):
    with pytest.raises(OptionError, match=r"tokenizer 'byte'.*add_eso.*did you mean add_eos"):
        gristmill.prepare([data], tmp_path / "out", tokenizer_options={"add_eso": False})
    with pytest.raises(OptionError, match=r"add_eso.*did you mean add_eos"):
        gristmill.stream(data, seq_len=64, tokenizer_options={"add_eso": False})
    assert not (tmp_path / "out").exists()


def test_a_declared_tokenizer_option_reaches_the_workers(data, tmp_path):
    out = tmp_path / "out"
    gristmill.prepare([data], out, tokenizer_options={"add_eos": False}, workers=2, task_bytes=300)
    doc = gristmill.open_dataset(out).documents.document(0)[0]
    assert bytes(doc.astype(np.uint8)).decode() == "document 0 "  # no EOS id (256) appended


def test_a_source_refuses_an_option_it_does_not_declare(data, tmp_path):
    with pytest.raises(OptionError, match=r"source 'jsonl'.*bogus.*takes no options"):
        gristmill.prepare([data], tmp_path / "out", source_options={"bogus": 1})
    with pytest.raises(OptionError, match=r"source 'jsonl'.*bogus"):
        convert([data], tmp_path / "out.jsonl", source_options={"bogus": 1})
    with pytest.raises(OptionError, match=r"source 'jsonl'.*bogus"):
        gristmill.stream(data, seq_len=64, source_options={"bogus": 1})
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.jsonl").exists()


def test_a_parquet_typo_names_the_close_option(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a b", "c d"], "id": [1, 2]}), path)
    with pytest.raises(OptionError, match=r"source 'parquet'.*colums.*did you mean columns"):
        gristmill.prepare([path], tmp_path / "out", source_options={"colums": ["text"]})
    out = gristmill.prepare([path], tmp_path / "out", source_options={"columns": ["text"]})
    assert out["splits"]["train"]["num_documents"] == 2


def test_an_executor_refuses_an_option_it_does_not_declare(data, tmp_path):
    with pytest.raises(OptionError, match=r"executor 'ray'.*adress.*did you mean address"):
        gristmill.prepare(
            [data], tmp_path / "out", executor="ray", executor_options={"adress": "auto"}
        )
    with pytest.raises(OptionError, match=r"executor 'local'.*takes no options"):
        gristmill.prepare([data], tmp_path / "out", executor_options={"address": "auto"})
    assert not (tmp_path / "out").exists()


def test_an_exporter_refuses_an_option_it_does_not_declare(dataset, tmp_path, gristmill_register):
    gristmill_register(TokensExporter())
    with pytest.raises(OptionError, match=r"exporter 'tokens'.*compres.*did you mean compress"):
        gristmill.export(dataset, tmp_path / "out", to="tokens", options={"compres": True})
    assert not (tmp_path / "out").exists()
    out = gristmill.export(dataset, tmp_path / "out", to="tokens", options={"compress": True})
    assert json.loads((out / "export.json").read_text())["splits"]["train"]["compress"] is True


# --- the same through the command line: exit 2 -----------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "section, says",
    [
        ('[dataset]\npacker = "greedy-stream"\npacker_options = {buffer_sizee = 4}', "buffer_size"),
        ("[loader]\nbatch_size = 2\nsampler_options = {shufle = false}", "shuffle"),
        ("[prepare]\ntokenizer_options = {add_eso = false}", "add_eos"),
        ('[prepare]\nexecutor = "ray"\nexecutor_options = {adress = "auto"}', "address"),
    ],
)
def test_the_cli_refuses_an_unknown_option_in_a_config_file(data, tmp_path, capsys, section, says):
    # A table may appear once in TOML: merge [prepare] keys of the case into one.
    head = f'sources = ["{data.as_posix()}"]\noutput = "{(tmp_path / "out").as_posix()}"\n'
    text = section.replace("[prepare]\n", "[prepare]\n" + head, 1)
    if "[prepare]" not in section:
        text = f"[prepare]\n{head}\n{section}\n"
    assert main(["prepare", "--config", str(_config(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "gristmill: error:" in err and f"did you mean {says}?" in err
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_an_unknown_source_option(data, tmp_path, capsys):
    text = f'[prepare]\nsource_options = {{bogus = 1}}\nsources = ["{data.as_posix()}"]\n'
    path = _config(tmp_path, text)
    assert main(["prepare", "--config", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "source 'jsonl'" in capsys.readouterr().err


def test_the_cli_refuses_an_unknown_exporter_option(dataset, tmp_path, capsys, gristmill_register):
    gristmill_register(TokensExporter())
    args = ["export", str(dataset), "--to", "tokens", "-o", str(tmp_path / "out")]
    assert main([*args, "--option", "compres=true"]) == 2
    assert "did you mean compress?" in capsys.readouterr().err
    assert main([*args, "--option", "compress=true"]) == 0
    summary = json.loads((tmp_path / "out" / "export.json").read_text())["splits"]["train"]
    assert summary["compress"] is True  # the value parsed as JSON where it is JSON


# --- what plugins declare --------------------------------------------------------------------------


def test_the_plugins_listing_shows_each_components_options(capsys):
    assert main(["plugins", "--all", "--json"]) == 0
    components = json.loads(capsys.readouterr().out)["components"]
    assert set(components["packers"]["greedy-stream"]["options"]) == {"buffer_size"}
    assert components["packers"]["none"]["options"] == {}
    assert set(components["samplers"]["distributed-length-grouped"]["options"]) == {"megabatch"}
    assert main(["plugins", "--all"]) == 0
    assert "buffer_size" in capsys.readouterr().out


class _Packer:
    def __init__(self, overlong: str = "truncate"):
        pass


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"Bad Name": "x"}, "option name 'Bad Name' is invalid"),
        ({"width": ""}, "option 'width' has no description"),
        (("width",), "options must map each name to a one-line description"),
        ({"width": "samples wide"}, "declares option 'width' but its factory does not take it"),
    ],
)
def test_a_record_declaring_bad_options_fails_its_plugin(gristmill_manager, options, reason):
    class Plugin:
        @hookimpl
        def gristmill_packers(self) -> list[PackerType]:
            return [PackerType(name="p", description="d", factory=_Packer, options=options)]

    with pytest.raises(PluginError, match=reason):
        gristmill_manager.register(Plugin(), "bad-options")


# --- integer arguments: whole numbers only, checked at the call ------------------------------------


@pytest.mark.parametrize("value", [1.5, True, "64", 0, -3, 64.0])
def test_open_dataset_refuses_a_seq_len_that_is_not_a_positive_integer(dataset, value):
    with pytest.raises(GristmillError, match=f"seq_len must be a positive integer, got {value!r}"):
        gristmill.open_dataset(dataset, seq_len=value, packer="first-fit")


def test_numpy_integers_are_integers(dataset):
    ds = gristmill.open_dataset(dataset, seq_len=np.int64(64), packer="first-fit")
    assert ds.seq_len == 64 and type(ds.seq_len) is int


@pytest.mark.parametrize(
    "argument, value",
    [
        ("max_record_bytes", 0),
        ("tokens_per_shard", 2.5),
        ("workers", True),
        ("task_bytes", "100"),
        ("max_doc_tokens", 1.0),
        ("seed", 0.5),
    ],
)
def test_prepare_refuses_integer_arguments_that_are_not(data, tmp_path, argument, value):
    with pytest.raises(GristmillError, match=rf"{argument} must be .*, got {value!r}"):
        gristmill.prepare([data], tmp_path / "out", **{argument: value})
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_max_record_bytes_0(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", str(data), "-o", str(out), "--max-record-bytes", "0"]) == 2
    assert "max_record_bytes must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["convert", str(data), "-o", str(tmp_path / "c.jsonl"), "--max-record-bytes", "0"])
    assert not out.exists() and not (tmp_path / "c.jsonl").exists()


@pytest.mark.parametrize(
    "argument, value",
    [("seq_len", True), ("max_record_bytes", 0), ("chunk_bytes", 1.5), ("max_doc_tokens", "9")],
)
def test_stream_refuses_integer_arguments_that_are_not(data, argument, value):
    options = {"seq_len": 64, argument: value}
    with pytest.raises(GristmillError, match=rf"{argument} must be .*, got {value!r}"):
        gristmill.stream(data, **options)


def test_convert_and_mixture_refuse_integer_arguments_that_are_not(data, dataset, tmp_path):
    with pytest.raises(GristmillError, match="max_record_bytes must be a positive integer"):
        convert([data], tmp_path / "c.jsonl", max_record_bytes=1.5)
    ds = gristmill.open_dataset(dataset)
    for argument, value in (("num_samples", 2.5), ("max_repeat", True), ("seed", "1")):
        with pytest.raises(GristmillError, match=rf"{argument} must be .*, got {value!r}"):
            gristmill.mixture({"a": ds}, {"a": 1.0}, **{argument: value})


@pytest.mark.parametrize(
    "argument, value", [("batch_size", True), ("batch_size", 2.0), ("world_size", 0), ("rank", -1)]
)
def test_dataloader_refuses_integer_arguments_that_are_not(dataset, argument, value):
    pytest.importorskip("torch")
    from gristmill.torch import dataloader

    options = {"batch_size": 2, argument: value}
    with pytest.raises(GristmillError, match=rf"{argument} must be .*, got {value!r}"):
        dataloader(gristmill.open_dataset(dataset), **options)
