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
from gristmill.ingest.sources import open_sources
from gristmill.plugin.manager import get_manager

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


@pytest.mark.parametrize("spec", ["hub:some-org/some-dataset", "preset:tiny-shakespeare"])
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
    assert (
        "gristmill looks offline" in result.stderr
        and "hub:/path/to/dataset-folder" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_presets_are_listed(capsys):
    assert main(["presets", "--json"]) == 0
    presets = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert set(presets) >= {"fineweb", "fineweb-edu", "the-pile", "tiny-shakespeare", "shakespeare"}
    assert presets["fineweb-edu"]["source"] == "hub:HuggingFaceFW/fineweb-edu:sample-10BT"
    assert presets["tiny-shakespeare"]["tokenizer"] == "byte"
