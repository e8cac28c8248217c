"""The hub-streaming source on local folders and loopback HTTP, and its offline behaviour."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

import gristmill
from gristmill.cli import main
from gristmill.errors import DataError
from gristmill.ingest.sources import named_spec, open_sources
from gristmill.plugin.manager import get_manager
from tests.helpers import run_gristmill

pytest.importorskip("datasets")

RECORDS = [{"text": f"part {p} record {r}"} for p in range(3) for r in range(4)]


@pytest.fixture
def dataset_folder(tmp_path):
    folder = tmp_path / "my-dataset" / "data"
    folder.mkdir(parents=True)
    for part in range(3):
        rows = RECORDS[part * 4 : part * 4 + 4]
        (folder / f"train-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder.parent


def texts(source) -> list[str]:
    return [record["text"] for record, _ in source.records()]


def test_a_local_dataset_folder_streams_and_shards(dataset_folder):
    [source] = open_sources([f"hub:{dataset_folder}"], get_manager())
    assert texts(source) == [r["text"] for r in RECORDS]
    pieces = source.split(8)
    assert len(pieces) == 3  # one per data file: the library's own sharding
    assert sorted(t for piece in pieces for t in texts(piece)) == sorted(r["text"] for r in RECORDS)
    _, where = next(iter(pieces[1].records()))
    assert str(where) == f"hub:{dataset_folder} [shard 1/3]: row 1"


def test_prepare_from_a_hub_folder(dataset_folder, tmp_path):
    gristmill.prepare(f"hub:{dataset_folder}", tmp_path / "out", progress=False)
    ds = gristmill.open_dataset(tmp_path / "out")
    assert len(ds) == 12
    assert ds.tokenizer.decode(ds.documents.document(0)[0]) == "part 0 record 0<|endoftext|>"


def test_files_served_over_http(tmp_path):
    (tmp_path / "served.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"hub:http://127.0.0.1:{server.server_address[1]}/served.jsonl"
        [source] = open_sources([url], get_manager())
        assert texts(source) == [r["text"] for r in RECORDS]
    finally:
        server.shutdown()


# A closed loopback port stands in for "no network": connection refused at once. The library's
# own offline mode must end in the same message.
NO_NETWORK = {
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_OFFLINE": "0",
    "HF_DATASETS_OFFLINE": "0",
}
OFFLINE_MODE = {
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


@pytest.mark.parametrize(
    "spec", ["hub:some-org/some-dataset", "some-org/some-dataset", "preset:tiny-shakespeare"]
)
@pytest.mark.parametrize(
    "variables", [NO_NETWORK, OFFLINE_MODE], ids=["no-network", "offline-mode"]
)
def test_offline_fails_at_once_with_a_way_out(tmp_path, spec, variables):
    env = {**os.environ, **variables}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gristmill.cli", "prepare", spec, "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert time.monotonic() - start < 60
    assert "hub:/path/to/dataset-folder" in result.stderr
    if variables is OFFLINE_MODE:  # set already: the way out is not to set it again
        assert "HF_HUB_OFFLINE is set" in result.stderr
        assert "HF_HUB_OFFLINE=1" not in result.stderr
    else:
        assert "gristmill looks offline. Use a cached copy with HF_HUB_OFFLINE=1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_presets_are_listed(capsys):
    assert main(["presets", "--json"]) == 0
    presets = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert set(presets) >= {
        "fineweb",
        "fineweb-edu",
        "the-pile",
        "pile",
        "tiny-shakespeare",
        "shakespeare",
    }
    assert presets["fineweb-edu"]["source"] == "hub:HuggingFaceFW/fineweb-edu:sample-10BT"
    assert presets["tiny-shakespeare"]["tokenizer"] == "byte"


def test_a_bare_org_name_is_a_hub_dataset_unless_a_local_path_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manager = get_manager()
    assert named_spec("some-org/some-data", manager) == "hub:some-org/some-data"
    assert named_spec("org/name:config@v1#test", manager) == "hub:org/name:config@v1#test"
    (tmp_path / "some-org" / "some-data").mkdir(parents=True)  # a local path always wins
    assert named_spec("some-org/some-data", manager) == "some-org/some-data"
    # A local ORG folder, or a NAME with a file's suffix: a path not found, not a Hub name.
    assert named_spec("some-org/missing", manager) == "some-org/missing"
    assert named_spec("corpus/train.jsonl", manager) == "corpus/train.jsonl"
    with pytest.raises(DataError, match=r"source 'corpus/train\.jsonl' not found"):
        open_sources(["corpus/train.jsonl"], manager)


def test_a_bare_org_name_reads_the_hub_dataset_by_cli_and_config(tmp_path):
    result = run_gristmill(
        "prepare", "some-org/some-dataset", "-o", str(tmp_path / "o"), env=OFFLINE_MODE
    )
    assert result.returncode == 2
    assert "some-org/some-dataset: no such local path; reading hub:some-org/some-dataset" in (
        result.stderr
    )
    assert "hub:some-org/some-dataset: cannot load some-org/some-dataset" in result.stderr
    config = tmp_path / "run.toml"
    config.write_text(
        f'[prepare]\nsources = "some-org/some-dataset"\noutput = "{tmp_path / "c"}"\n'
    )
    result = run_gristmill("prepare", "--config", str(config), env=OFFLINE_MODE)
    assert "hub:some-org/some-dataset: cannot load" in result.stderr


def test_a_missing_local_folder_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"hub:./missing: no such folder: ./missing"):
        open_sources(["hub:./missing"], get_manager())
    (tmp_path / "data.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match=r"data\.jsonl is a file: hub: reads a dataset folder"):
        open_sources([f"hub:{tmp_path / 'data.jsonl'}"], get_manager())


def test_blank_lines_of_a_text_dataset_are_passed_over_and_counted(tmp_path):
    folder = tmp_path / "works"
    folder.mkdir()
    (folder / "works.txt").write_text("ACT I\n\nSCENE I. Elsinore.\n   \nEnter two sentinels\n")
    [source] = open_sources([f"hub:{folder}"], get_manager())
    rows = [(r["text"], where.line) for r, where in (i for i in source.records() if len(i) == 2)]
    assert rows == [("ACT I", 1), ("SCENE I. Elsinore.", 3), ("Enter two sentinels", 5)]
    manifest = gristmill.prepare(f"hub:{folder}", tmp_path / "out", progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 3
    assert manifest["provenance"]["passed_over"] == {"blank-line": 2}
