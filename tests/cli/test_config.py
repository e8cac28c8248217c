"""Config files: a TOML or YAML file builds the same objects as the Python calls; every mistake
is reported with the file and the key's path; the tables cannot drift from the API or the docs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.cli.main import build_parser
from gristmill.config import PREPARE, SECTIONS, ConfigError, from_config, reference
from gristmill.errors import MissingDependencyError
from tests.helpers import run_gristmill

DOCS = Path(__file__).resolve().parents[2] / "docs"

# The same run, written as TOML and as YAML. {src} and {out} are filled in per test.
TOML = """\
[prepare]
sources = ["{src}"]
output = "{out}"
tokenizer = "byte"
val_fraction = 0.1
tokens_per_shard = 2000

[dataset]
seq_len = 128
packer = "first-fit"
packer_options = {{}}
seed = 3

[loader]
batch_size = 4
sampler = "distributed-length-grouped"
drop_last = true

[collator]
padding_free = true
"""

YAML = """\
prepare:
  sources: ["{src}"]
  output: {out}
  tokenizer: byte
  val_fraction: 0.1
  tokens_per_shard: 2000
dataset:
  seq_len: 128
  packer: first-fit
  packer_options: {{}}
  seed: 3
loader:
  batch_size: 4
  sampler: distributed-length-grouped
  drop_last: true
collator:
  padding_free: true
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "qa.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"question {i}? " * (i % 7 + 1), "completion": f"answer {i}."})
            + "\n"
            for i in range(120)
        )
    )
    return path


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> Path:
    """The dataset the config describes, prepared by the plain Python call."""
    out = tmp_path_factory.mktemp("python") / "ds"
    gristmill.prepare(source, out, val_fraction=0.1, tokens_per_shard=2000, progress=False)
    return out


def _write(path: Path, text: str, **values: object) -> Path:
    path.write_text(text.format(**values), encoding="utf-8")
    return path


def _same_samples(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x.keys() == y.keys()
        assert all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_a_config_builds_what_the_python_calls_build(suffix, source, prepared, tmp_path):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    out = tmp_path / "ds"
    text = TOML if suffix == ".toml" else YAML
    config = from_config(_write(tmp_path / f"run{suffix}", text, src=source, out=out))

    manifest = config.prepare(progress=False)
    assert (
        manifest["fingerprint"]
        == json.loads((prepared / "manifest.json").read_text())["fingerprint"]
    )
    assert manifest["splits"].keys() == {"train", "val"}

    data = config.data()
    want = gristmill.open_dataset(prepared, seq_len=128, packer="first-fit", seed=3)
    assert (data.path, data.seq_len, data.packer, data.seed) == (out, 128, "first-fit", 3)
    _same_samples(data, want)

    torch = pytest.importorskip("torch")
    from gristmill.torch import Collator, dataloader

    got = list(config.dataloader())
    expected = list(
        dataloader(
            want,
            batch_size=4,
            sampler="distributed-length-grouped",
            drop_last=True,
            collate_fn=Collator(padding_free=True),
        )
    )
    assert len(got) == len(expected) > 3
    for a, b in zip(got, expected):
        assert a.keys() == b.keys() and "cu_seqlens" in a
        for k in a:  # tensors, and max_seqlen (an int)
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]


def test_a_mixture_and_a_stream_from_a_config(source, prepared, tmp_path):
    mixed = from_config(
        _write(
            tmp_path / "mix.toml",
            """\
[mixture]
weights = {{ train = 3, val = 1 }}
max_repeat = 2
seed = 5

[mixture.datasets.train]
path = "{out}"
seq_len = 64
packer = "first-fit"

[mixture.datasets.val]
path = "{out}"
split = "val"
seq_len = 64
packer = "first-fit"
""",
            out=prepared,
        )
    ).data()
    want = gristmill.mixture(
        {
            "train": gristmill.open_dataset(prepared, seq_len=64, packer="first-fit"),
            "val": gristmill.open_dataset(prepared, "val", seq_len=64, packer="first-fit"),
        },
        {"train": 3, "val": 1},
        max_repeat=2,
        seed=5,
    )
    assert mixed.identity == want.identity and mixed.counts.tolist() == want.counts.tolist()
    _same_samples(mixed, want)

    streamed = from_config(
        _write(
            tmp_path / "stream.toml",
            '[stream]\nsources = "{src}"\nseq_len = 96\npacker = "concat-chunk"\n',
            src=source,
        )
    ).data()
    expected = gristmill.stream(source, seq_len=96, packer="concat-chunk")
    assert streamed.identity == expected.identity
    for a, b in zip(streamed, expected, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_overrides_replace_keys_and_none_leaves_a_key_out(source, prepared, tmp_path):
    path = _write(tmp_path / "run.toml", TOML, src=source, out=prepared)
    config = from_config(path, loader={"batch_size": 2, "sampler": None}, dataset={"seed": 9})
    assert config.sections["loader"] == {"batch_size": 2, "drop_last": True}
    assert config.sections["dataset"]["seed"] == 9
    with pytest.raises(ConfigError) as caught:
        from_config(path, loader={"batch_size": 0})
    assert caught.value.problems == [
        "overrides: loader.batch_size: expected a positive integer, got 0"
    ]


def test_prepare_config_on_the_command_line(source, tmp_path):
    out = tmp_path / "ds"
    config = _write(tmp_path / "run.toml", TOML, src=source, out=out)
    # An option given on the command line overrides the file; the file's others still apply.
    done = run_gristmill("prepare", "--config", str(config), "--val-fraction", "0.25")
    assert done.returncode == 0, done.stderr
    settings = json.loads((out / "manifest.json").read_text())["provenance"]["config"]
    assert settings["val_fraction"] == 0.25  # the command line's
    assert settings["tokens_per_shard"] == 2000  # the file's
    assert settings["seed"] == 0  # neither: the API's default, not argparse's

    # The sources and output may come from the command line alone.
    other = tmp_path / "other"
    bare = _write(tmp_path / "bare.toml", "[prepare]\ntokens_per_shard = 500\n")
    done = run_gristmill("prepare", str(source), "-o", str(other), "--config", str(bare))
    assert done.returncode == 0, done.stderr
    assert (
        json.loads((other / "manifest.json").read_text())["provenance"]["config"][
            "tokens_per_shard"
        ]
        == 500
    )

    done = run_gristmill("prepare", "--config", str(bare))
    assert done.returncode == 2
    assert "bare.toml: prepare.sources: missing (or SOURCE... on the command line)" in done.stderr
    assert "bare.toml: prepare.output: missing (or -o DIR on the command line)" in done.stderr
    done = run_gristmill("prepare", "--config", str(config), "--workers", "0")
    assert done.returncode == 2
    assert "command line: prepare.workers: expected a positive integer, got 0" in done.stderr
    done = run_gristmill("prepare", str(source))
    assert done.returncode == 2 and "prepare needs SOURCE... and -o DIR" in done.stderr


ERRORS = {
    "unknown key": (
        "[prepare]\nsources = 'a.jsonl'\noutput = 'ds'\ntokenzer = 'byte'\n",
        ["run.toml: prepare.tokenzer: unknown key; did you mean tokenizer?"],
    ),
    "unknown section": (
        "[loder]\nbatch_size = 8\n",
        ["run.toml: loder: unknown section; did you mean loader?"],
    ),
    "wrong type": (
        "[dataset]\npath = 'ds'\n[loader]\nbatch_size = 'eight'\n",
        ['run.toml: loader.batch_size: expected a positive integer, got "eight"'],
    ),
    "wrong type in a mixture": (
        "[mixture]\nweights = {a = 1}\n[mixture.datasets.a]\npath = 'ds'\nseq_len = true\n",
        ["run.toml: mixture.datasets.a.seq_len: expected a positive integer, got true"],
    ),
    "choice": (
        "[dataset]\npath = 'ds'\noverlong = 'cut'\n",
        [
            "run.toml: dataset.overlong: expected one of truncate, truncate-left, fragment, "
            'drop, got "cut"'
        ],
    ),
    "missing key": (
        "[dataset]\npath = 'ds'\n[loader]\nseed = 1\n",
        ["run.toml: loader.batch_size: missing; expected a positive integer"],
    ),
    "missing path": (
        "[dataset]\nseq_len = 8\n",
        ["run.toml: dataset.path: missing (and no [prepare] section whose output it would be)"],
    ),
    "conflicting sections": (
        "[dataset]\npath = 'ds'\n[stream]\nsources = 'a.jsonl'\n",
        ["run.toml: [dataset] and [stream] both say where the samples come from: keep one"],
    ),
    "loader key for other data": (
        "[stream]\nsources = 'a.jsonl'\n[loader]\nbatch_size = 2\nsampler = 'random'\n",
        ["run.toml: loader.sampler: applies to [dataset] and [mixture] only, not [stream]"],
    ),
    "weights without datasets": (
        "[mixture]\nweights = {a = 1, b = 2}\n[mixture.datasets.a]\npath = 'ds'\n",
        ["run.toml: mixture.weights.b: no dataset 'b' in mixture.datasets"],
    ),
    "not a table": ("loader = 8\n", ["run.toml: loader: expected a table of keys, got 8"]),
    "several at once": (
        "[prepare]\nsources = []\noutput = 'ds'\nworkers = 0\n",
        [
            "run.toml: prepare.sources: expected a string or a non-empty list of strings, got []",
            "run.toml: prepare.workers: expected a positive integer, got 0",
        ],
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_every_problem_names_the_file_and_the_key_path(case, tmp_path, monkeypatch):
    text, problems = ERRORS[case]
    monkeypatch.chdir(tmp_path)  # messages name the file as it was given
    Path("run.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        from_config("run.toml")
    assert caught.value.problems == problems
    assert str(caught.value) == "\n".join(problems)


def test_syntax_errors_name_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("run.toml").write_text("[loader]\nbatch_size = 8\nseed = \n")
    with pytest.raises(ConfigError, match=r"^run\.toml: invalid TOML: .*line 3"):
        from_config("run.toml")
    Path("run.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"^run\.json: a config file is \.toml, \.yaml or \.yml"):
        from_config("run.json")
    with pytest.raises(ConfigError, match=r"^missing\.toml: no such file"):
        from_config("missing.toml")
    pytest.importorskip("yaml")
    Path("run.yaml").write_text("loader:\n  batch_size: 8\n seed: 1\n")
    with pytest.raises(ConfigError, match=r"^run\.yaml: invalid YAML at line 3, column 2: "):
        from_config("run.yaml")
    Path("list.yml").write_text("- loader\n")
    with pytest.raises(ConfigError, match=r'list\.yml: expected a mapping .* got \["loader"\]'):
        from_config("list.yml")


def test_yaml_without_pyyaml_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    path = _write(tmp_path / "run.yaml", "loader:\n  batch_size: 8\n")
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'gristmill[yaml]'")):
        from_config(path)


def _parameters(target: str) -> dict[str, inspect.Parameter]:
    module, name = target.split(":")
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    return {
        n: p
        for n, p in signature.parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


# [prepare], [dataset] and [stream] are made from the calls' options (gristmill.options), so they
# cannot drift; the sections written by hand are held to the signatures of what they feed.
@pytest.mark.parametrize("name", [name for name, section in SECTIONS.items() if section.api])
def test_a_hand_written_section_holds_exactly_the_keyword_arguments_of_its_api(name):
    section = SECTIONS[name]
    if any(t.startswith(("torch", "gristmill.torch")) for t in section.api):
        pytest.importorskip("torch")
    apis = [_parameters(target) for target in section.api]
    ours = [p for target, p in zip(section.api, apis) if target.startswith("gristmill")]
    keys = {key.argument or key_name: (key_name, key) for key_name, key in section.keys.items()}
    missing = {p for params in ours for p in params} - set(keys) - set(section.ignored)
    assert not missing, f"[{name}] lacks keys for these arguments: {sorted(missing)}"
    for argument, (key_name, key) in keys.items():
        where = f"{name}.{key_name}"
        param = next((params[argument] for params in apis if argument in params), None)
        assert param is not None, f"{where}: no such argument in {section.api}"
        if key.required:
            assert param.default is param.empty, f"{where}: the API has a default"
            continue
        assert param.default is not param.empty, f"{where}: the API requires it"
        default = key.default
        if key.kind.says.startswith("one of float32") and default is not None:
            default = getattr(importlib.import_module("torch"), default)
        assert default == param.default, f"{where}: default {key.default!r}, API {param.default!r}"
        assert key.default is None or key.kind.accepts(key.default), where


def test_every_prepare_option_is_a_config_key():
    """`gristmill prepare --config` passes the options given as [prepare] keys."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {a.dest for a in sub.choices["prepare"]._actions} - {"help", "config"}
    assert options - set(PREPARE.keys) == set()


def _block(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_docs_list_every_key():
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- keys: .*? -->\n(.*?)<!-- /keys -->", text, re.S)
    assert found, "docs/configuration.md lost its <!-- keys --> block"
    assert found.group(1) == reference(), (
        "docs/configuration.md's key tables are out of date: replace the <!-- keys --> block "
        "with the output of `python -c 'import gristmill.config as c; print(c.reference())'`"
    )


def test_the_docs_examples_are_valid(tmp_path):
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    examples = [("toml", t) for t in _block(text, "toml")]
    if importlib.util.find_spec("yaml"):
        examples += [("yaml", t) for t in _block(text, "yaml")]
    assert len(examples) >= 2
    for i, (suffix, example) in enumerate(examples):
        path = tmp_path / f"example{i}.{suffix}"
        path.write_text(example, encoding="utf-8")
        assert from_config(path).sections, example


def test_a_trainer_built_from_a_config(prepared, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from tests.torch.test_collator import _model

    config = from_config(
        _write(
            tmp_path / "run.toml",
            '[dataset]\npath = "{out}"\nseq_len = 128\npacker = "first-fit"\n'
            "[loader]\nbatch_size = 4\n[collator]\npadding_free = false\n",
            out=prepared,
        )
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=config.sections["loader"]["batch_size"],
        max_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = transformers.Trainer(
        model=_model("sdpa"),
        args=args,
        train_dataset=config.data(),
        data_collator=config.collator(),
    )
    assert trainer.train().global_step == 2
    assert config.collator(mask="additive", dtype="bfloat16").dtype == torch.bfloat16
