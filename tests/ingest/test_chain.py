"""The ingest chain that prepare, stream and convert share: the same sources refused, the same
records skipped, the same documents, whichever of them reads the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.errors import DataError
from gristmill.ingest.plan import plan_chunks
from gristmill.ingest.sources import open_sources
from gristmill.plugin.manager import get_manager
from gristmill.store.convert import convert


def _drifting_tables(folder: Path) -> list[Path]:
    """Three CSV files; the second has a column the first lacks (its text would still map)."""
    folder.mkdir()
    files = {
        "a.csv": "text\nthe first\nthe second\n",
        "b.csv": "text,extra\nthe drifting one,x\n",
        "c.csv": "text\nthe third\n",
    }
    for name, content in files.items():
        (folder / name).write_text(content)
    return [folder / name for name in files]


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_a_stream_refuses_a_drifting_schema_as_prepare_does(tmp_path):
    files = _drifting_tables(tmp_path / "data")
    with pytest.raises(DataError) as prepared:
        gristmill.prepare(files, tmp_path / "ds", progress=False)
    with pytest.raises(DataError) as streamed:
        list(gristmill.stream(files, packer="none"))
    assert str(streamed.value) == str(prepared.value)
    assert "column 'extra' is absent there, string here" in str(streamed.value)


def test_a_stream_skips_a_drifting_source_as_prepare_does(tmp_path):
    files = _drifting_tables(tmp_path / "data")
    manifest = gristmill.prepare(files, tmp_path / "ds", on_error="skip", progress=False)
    streamed = gristmill.stream(files, packer="none", on_error="skip")
    samples = list(streamed)
    assert streamed.stats.skipped == manifest["provenance"]["skipped"] == {"schema-drift": 1}
    assert _equal(samples, list(gristmill.open_dataset(tmp_path / "ds", packer="none")))
    assert list(streamed) and streamed.stats.skipped == {"schema-drift": 1}  # once per pass


def test_convert_skips_the_same_source(tmp_path):
    files = _drifting_tables(tmp_path / "data")
    out = tmp_path / "out.jsonl"
    assert convert(files, out, on_error="skip") == {"records": 3, "skipped": {"schema-drift": 1}}
    assert "the drifting one" not in out.read_text()


def test_a_refused_source_stays_whole_and_weighs_nothing_in_the_plan(tmp_path):
    files = _drifting_tables(tmp_path / "data")
    opened = list(enumerate(open_sources(files, get_manager())))
    plain = plan_chunks(opened, 10)
    # Each file is more than 10 bytes: alone in its chunk, unless refused.
    assert [[i for i, _ in chunk.parts] for chunk in plain] == [[0], [0], [1], [2]]
    refused = plan_chunks(opened, 10, unread={1})
    assert [[i for i, _ in chunk.parts] for chunk in refused] == [[0], [0, 1], [2]]
    assert [chunk.index for chunk in refused] == [0, 1, 2]
    assert refused[1].parts[1][1] is opened[1][1]  # not split: it is never read
