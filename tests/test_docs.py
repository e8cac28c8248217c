"""The docs keep up with the code: hook docstrings, the generated hook reference, the format spec."""

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
from gristmill import hookspecs
from gristmill.components import KINDS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load_gen_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gristmill_docs_gen_hooks", DOCS / "gen_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_hooks = _load_gen_hooks()

HOOKS = {
    name: fn
    for name, fn in vars(hookspecs).items()
    if name.startswith("gristmill_") and inspect.isfunction(fn)
}


def test_there_are_hooks() -> None:
    assert HOOKS, "no gristmill_* functions found in gristmill.hookspecs"
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
        "docs/hooks.md is out of date with gristmill.hookspecs: run `python docs/gen_hooks.py`"
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_record_type(name: str) -> None:
    hooks_with_records = {hook for hook, _ in KINDS.values()}
    assert name in hooks_with_records, (
        f"{name} has no entry in gristmill.components.KINDS (kind -> (hook, record type))"
    )


def test_every_kind_has_a_hook() -> None:
    missing = [hook for hook, _ in KINDS.values() if hook not in HOOKS]
    assert not missing, f"KINDS names hooks that gristmill.hookspecs does not define: {missing}"


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
