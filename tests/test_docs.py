"""The docs keep up with the code: hook docstrings, the generated hook and command-line
references, the format spec, and the site's nav (mkdocs.yml) listing every page."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import gristmill
from gristmill.plugin import hookspecs
from gristmill.plugin.components import KINDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load_generator(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gristmill_docs_{name}", DOCS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_hooks = _load_generator("gen_hooks")
gen_cli = _load_generator("gen_cli")

HOOKS = {
    name: fn
    for name, fn in vars(hookspecs).items()
    if name.startswith("gristmill_") and inspect.isfunction(fn)
}


def test_there_are_hooks() -> None:
    assert HOOKS, "no gristmill_* functions found in gristmill.plugin.hookspecs"
    assert [name for name, _ in gen_hooks.hook_functions()] == sorted(
        HOOKS, key=lambda n: HOOKS[n].__code__.co_firstlineno
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hookspec_docstring_is_complete(name: str) -> None:
    doc = inspect.getdoc(HOOKS[name])
    assert doc, f"{name} has no docstring"
    lines = doc.splitlines()
    assert lines[0].strip(), f"{name}: the docstring must start with a one-line summary"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{name}: the summary must be one line, followed by a blank line"
    )
    for needed in ("Called", ":return:", ".. versionadded::", "Example::"):
        assert needed in doc, f"{name}: the docstring lacks {needed!r}"
    if getattr(HOOKS[name], "gristmill_spec", {}).get("firstresult"):
        assert "Stops at first non-None result." in doc, (
            f"{name} is a firstresult hook: say 'Stops at first non-None result.'"
        )


def test_hook_reference_is_up_to_date() -> None:
    written = (DOCS / "hooks.md").read_text(encoding="utf-8")
    assert written == gen_hooks.render(), (
        "docs/hooks.md is out of date with gristmill.plugin.hookspecs: run `python docs/gen_hooks.py`"
    )


def test_cli_reference_is_up_to_date() -> None:
    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert written == gen_cli.render(), (
        "docs/cli.md is out of date with gristmill.cli.main.build_parser(): run `python docs/gen_cli.py`"
    )


def test_cli_reference_names_every_command_and_option() -> None:
    from gristmill.cli.main import build_parser

    written = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, _, parser in gen_cli._subcommands(build_parser()):
        assert f"## gristmill {name}\n" in written, f"docs/cli.md has no section for {name}"
        for action in gen_cli._documented(parser):  # all but -h/--help
            for option in action.option_strings:
                assert f"`{option}" in written, f"docs/cli.md does not show {name} {option}"


def _nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav lists. Read without a YAML parser: the file holds a Python tag
    (the toc slugify) that a safe loader refuses, and the test environments may lack PyYAML."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    found = re.search(r"^nav:\n((?:[ #].*\n|\n)*)", text, re.M)
    assert found, "mkdocs.yml has no top-level nav"
    return re.findall(r"^\s*- (?:[^:\n]+:\s*)?([^\s:]+\.md)\s*$", found.group(1), re.M)


def test_the_site_nav_lists_every_page_once() -> None:
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    nav = _nav_pages()
    assert nav, "found no pages in mkdocs.yml's nav"
    assert sorted(set(nav)) == sorted(nav), f"pages listed twice in the nav: {nav}"
    missing = sorted(set(pages) - set(nav))
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"
    dangling = sorted(set(nav) - set(pages))
    assert not dangling, f"mkdocs.yml's nav names pages that docs/ lacks: {dangling}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_record_type(name: str) -> None:
    hooks_with_records = {hook for hook, _ in KINDS.values()}
    assert name in hooks_with_records, (
        f"{name} has no entry in gristmill.plugin.components.KINDS (kind -> (hook, record type))"
    )


def test_every_kind_has_a_hook() -> None:
    missing = [hook for hook, _ in KINDS.values() if hook not in HOOKS]
    assert not missing, (
        f"KINDS names hooks that gristmill.plugin.hookspecs does not define: {missing}"
    )


def _reader_example() -> str:
    text = (DOCS / "format.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- reader-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/format.md lost its marked numpy reader example"
    return found.group(1)


def test_format_doc_reader_reads_a_prepared_dataset(tmp_path: Path, gristmill_manager) -> None:
    # Plain text first (long enough to fill maskless shards), then prompt/completion pairs (masked),
    # in two splits and many small shards.
    notes = tmp_path / "notes.jsonl"
    notes.write_text(
        "".join(json.dumps({"text": f"plain text {i} ✓ " * 20}) + "\n" for i in range(3)),
        encoding="utf-8",
    )
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
            for i in range(40)
        ),
        encoding="utf-8",
    )
    out = tmp_path / "ds"
    manifest = gristmill.prepare([notes, qa], out, val_fraction=0.25, tokens_per_shard=200)
    shards = [shard for entry in manifest["splits"].values() for shard in entry["shards"]]
    assert {shard["mask"] is None for shard in shards} == {True, False}

    namespace: dict[str, object] = {}
    exec(compile(_reader_example(), "docs/format.md", "exec"), namespace)
    read_split = namespace["read_split"]

    for split in manifest["splits"]:
        dataset = gristmill.open_dataset(out, split)
        documents = list(read_split(str(out), split))  # type: ignore[operator]
        assert len(documents) == dataset.documents.num_documents
        for index, (ids, mask) in enumerate(documents):
            want_ids, want_mask = dataset.documents.document(index)
            assert ids.dtype == want_ids.dtype and np.array_equal(ids, want_ids)
            if want_mask is None:
                assert mask is None
            else:
                assert np.array_equal(mask, want_mask)


def test_the_plugin_guide_shows_the_template_as_it_is():
    """docs/plugins.md walks through contrib/gristmill-example: its code blocks are the files."""
    guide = (DOCS / "plugins.md").read_text("utf-8")
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```\n", guide, re.S)
    template = DOCS.parent / "contrib" / "gristmill-example"
    for name in ("src/gristmill_example/__init__.py", "pyproject.toml", "tests/test_example.py"):
        assert (template / name).read_text("utf-8") in blocks, f"{name} differs from the guide"


@pytest.mark.parametrize("page", ["guarantees.md", "architecture.md"])
def test_every_test_a_page_names_exists(page: str) -> None:
    # A promise is only as good as the test that holds it: a renamed or removed test must not
    # leave a page pointing at nothing.
    text = (DOCS / page).read_text(encoding="utf-8")
    named = re.findall(r"`?(test_\w+\.py)(?:::(test_\w+))?", text)
    assert len(named) > (50 if page == "guarantees.md" else 5)
    modules = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for module, test in named:
        path = modules.get(module)
        if path is None:
            missing.append(module)
        elif test and not re.search(rf"^(async )?def {test}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{module}::{test}")
    assert not missing, f"docs/{page} names tests that do not exist: {missing}"


def test_the_architecture_page_maps_every_module_of_the_core() -> None:
    """Its table of layers names each package's modules: a module added, moved or removed
    without the page saying so fails here."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    core = ROOT / "core" / "src" / "gristmill"
    for package in ("cli", "torch", "serve", "store", "ingest", "plugin"):
        row = next(
            line
            for line in text.splitlines()
            if line.startswith("| ") and f"`gristmill.{package}`" in line
        )
        named = set(re.findall(r"`(\w+)\.py`", row))
        on_disk = {p.stem for p in (core / package).glob("*.py")} - {"__init__", "__main__"}
        assert named == on_disk, (
            f"gristmill.{package}: the page names {sorted(named - on_disk)} that do not exist and leaves out {sorted(on_disk - named)}"
        )
