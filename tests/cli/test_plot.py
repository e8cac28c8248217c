"""`gristmill inspect --plot`: a real image of the report's numbers, and the report still printed."""

from __future__ import annotations

import json
import struct
import sys

import pytest

from gristmill.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dataset(prepared_dataset):
    # Lengths over several powers of two, so the histogram has several buckets.
    return prepared_dataset([{"text": "x" * (3 + i * i)} for i in range(60)], val_fraction=0.2)


def test_inspect_plot_writes_a_png_and_still_prints_the_report(dataset, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    image = tmp_path / "report.png"
    code = main(["inspect", str(dataset), "--seq-len", "64,512", "--plot", str(image)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "packing first-fit @ 512:" in out and "document length:" in out
    assert f"{image}: drew the [train] length histogram" in err
    data = image.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    assert width > 800 and height > 300
    assert not list(tmp_path.glob("*.tmp-*"))  # written under a temporary name, then renamed


def test_inspect_plot_with_json_keeps_stdout_json(dataset, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    image = tmp_path / "val.svg"
    assert main(["inspect", str(dataset), "--split", "val", "--json", "--plot", str(image)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["val"]["packing"]
    assert image.read_text().lstrip().startswith("<?xml")


def test_inspect_plot_refuses_a_format_it_cannot_draw(dataset, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["inspect", str(dataset), "--plot", str(tmp_path / "report.docx")]) == 2
    assert "cannot draw .docx files; use one of" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_inspect_plot_without_matplotlib_names_the_extra(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert main(["inspect", str(dataset), "--plot", str(tmp_path / "report.png")]) == 2
    out, err = capsys.readouterr()
    assert "--plot needs matplotlib: pip install 'gristmill[plot]'" in err
    assert out == ""  # refused before any work
