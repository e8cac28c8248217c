"""Every option is declared once, in gristmill/options.py: an option added there alone is a flag
on the command line, a key of config files, a keyword of the calls and part of the fingerprint
that decides whether a dataset is already prepared.

The test adds one to a copy of the package (a real edit of the one place, not a stand-in), and
runs that copy in other processes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gristmill
from gristmill.options import ConvertOptions, DatasetOptions, PrepareOptions, StreamOptions
from gristmill.store.convert import convert
from tests.helpers import run_gristmill

# One more reading option, as it would be written in ReadingOptions.
DUMMY = """
    dummy: int = option(
        7,
        POSITIVE,
        "a test's option",
        flag=Flag("a test's option (default: {default})", metavar="N"),
        output=True,
    )"""


@pytest.fixture(scope="module")
def with_dummy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the gristmill package whose reading options have one more: ``dummy``."""
    root = tmp_path_factory.mktemp("patched")
    package = Path(gristmill.__file__).parent
    shutil.copytree(package, root / "gristmill", ignore=shutil.ignore_patterns("__pycache__"))
    path = root / "gristmill" / "options.py"
    text = path.read_text(encoding="utf-8")
    end = text.index("\n\n\n", text.index("class ReadingOptions(Options):"))
    path.write_text(text[:end] + DUMMY + text[end:], encoding="utf-8")
    return root


def _python(code: str, root: Path) -> dict:
    """Run ``code`` with the copy at ``root`` imported as gristmill; what it printed as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_option_is_a_flag_of_every_command_that_reads(with_dummy):
    for command in ("prepare", "convert"):
        done = run_gristmill(command, "--help", extra_path=[with_dummy])
        assert done.returncode == 0, done.stderr
        assert "[--dummy N]" in _words(done.stdout)
        assert "a test's option (default: 7)" in _words(done.stdout)
    assert "--dummy" not in run_gristmill("prepare", "--help").stdout  # the copy, not this one


def test_the_option_is_a_key_and_a_keyword(with_dummy, tmp_path):
    (tmp_path / "bad.toml").write_text("[stream]\nsources = 'a.jsonl'\ndummy = 0\n")
    found = _python(
        f"""
        import inspect, json
        import gristmill
        from gristmill.config import SECTIONS, ConfigError, from_config, reference
        from gristmill.store.convert import convert

        try:
            from_config({str(tmp_path / "bad.toml")!r})
        except ConfigError as exc:
            problems = exc.problems
        print(json.dumps({{
            "keys": {{n: s.keys["dummy"].default for n, s in SECTIONS.items() if "dummy" in s.keys}},
            "reference": reference(),
            "problems": problems,
            "defaults": [
                inspect.signature(call).parameters["dummy"].default
                for call in (gristmill.prepare, gristmill.stream, convert)
            ],
        }}))
        """,
        with_dummy,
    )
    assert found["keys"] == {"prepare": 7, "stream": 7}
    assert "| `dummy` | a positive integer | `7` | a test's option |" in found["reference"]
    assert found["problems"] == [
        f"{tmp_path / 'bad.toml'}: stream.dummy: expected a positive integer, got 0"
    ]
    assert found["defaults"] == [7, 7, 7]


def test_the_option_takes_part_in_the_fingerprints(with_dummy, write_jsonl, tmp_path):
    data = write_jsonl([{"text": f"document {i}"} for i in range(20)])
    out = tmp_path / "ds"
    done = run_gristmill(
        "prepare", str(data), "-o", str(out), "--dummy", "3", extra_path=[with_dummy]
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "manifest.json").read_text())["provenance"]["config"]["dummy"] == 3
    # The same run with another value is another dataset: refused, not found "already prepared".
    done = run_gristmill("prepare", str(data), "-o", str(out), extra_path=[with_dummy])
    assert done.returncode == 2
    assert "already holds a dataset prepared from other sources or settings" in done.stderr
    done = run_gristmill(
        "prepare", str(data), "-o", str(out), "--dummy", "0", extra_path=[with_dummy]
    )
    assert "dummy must be a positive integer, got 0" in done.stderr
    identities = _python(
        f"""
        import json
        import gristmill

        print(json.dumps([
            gristmill.stream({str(data)!r}, seq_len=8, **given).identity
            for given in ({{}}, {{"dummy": 7}}, {{"dummy": 3}})
        ]))
        """,
        with_dummy,
    )
    assert identities[0] == identities[1] != identities[2]


# --- the calls take their options' fields as keywords ---------------------------------------------


@pytest.mark.parametrize(
    "call, options, own",
    [
        (gristmill.prepare, PrepareOptions, ("sources", "out")),
        (gristmill.stream, StreamOptions, ("sources",)),
        (convert, ConvertOptions, ("sources", "out")),
        (gristmill.open_dataset, DatasetOptions, ("path",)),
    ],
)
def test_a_call_takes_the_fields_of_its_options(call, options, own):
    parameters = inspect.signature(call).parameters
    assert set(parameters) == {*own, *(f.name for f in dataclasses.fields(options)), "manager"}
    for f in dataclasses.fields(options):
        assert parameters[f.name].default == f.default, f.name
    unexpected = rf"^{call.__name__}\(\) got an unexpected keyword argument 'bogus'"
    with pytest.raises(TypeError, match=unexpected):
        call(*("x" for _ in own), bogus=1)


def test_open_dataset_takes_the_split_by_position_too():
    split = inspect.signature(gristmill.open_dataset).parameters["split"]
    assert split.kind is split.POSITIONAL_OR_KEYWORD and split.default == "train"
