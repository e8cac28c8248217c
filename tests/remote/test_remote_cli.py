"""``gristmill inspect``, ``verify`` and ``export`` on a URL, run as the command line runs them,
against the S3 server and the HTTP server on loopback: inspect fetches only what its report
reads, verify fetches and checks every file and names a damaged object, export reads through
the mirror; a 403, a 404, an unreachable server and a missing library exit 2 with a message
that names the URL and never a credential."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gristmill.cli.main import main
from gristmill.plugin.remote.mirror import CACHE_LIMIT_VARIABLE, pinned
from tests.cli.test_options import TokensExporter
from tests.remote.conftest import BUCKET

SECRET = "s3cr3t-never-shown"


def storage_options(s3_server: Any, secret: str = "testing") -> list[str]:
    """The S3 server's storage options as ``--storage-option`` flags."""
    client = json.dumps(s3_server.options["client_kwargs"])
    return [
        *("--storage-option", "key=testing"),
        *("--storage-option", f"secret={secret}"),
        *("--storage-option", f"client_kwargs={client}"),
    ]


def objects_read(s3_server: Any, url: str) -> set[str]:
    """The objects of the dataset at ``url`` that the S3 server answered a GET for."""
    prefix = "/" + url.removeprefix("s3://") + "/"
    return {
        path.removeprefix(prefix)
        for path in s3_server.requests.by_path("GET")
        if path.startswith(prefix)
    }


def shard_files(dataset: Path, split: str = "train") -> list[list[str]]:
    """Each shard's file paths, in order."""
    manifest = json.loads((dataset / "manifest.json").read_bytes())
    return [
        [entry["path"] for entry in shard.values() if isinstance(entry, dict) and "path" in entry]
        for shard in manifest["splits"][split]["shards"]
    ]


def every_file(dataset: Path) -> set[str]:
    return {
        p.relative_to(dataset).as_posix()
        for p in dataset.rglob("*")
        if p.is_file() and not p.relative_to(dataset).parts[0].startswith(".gristmill-")
    }


def damage(s3_server: Any, dataset: Path, url: str, name: str) -> None:
    """Flip one byte of the object ``name`` at the server (its size unchanged)."""
    data = bytearray((dataset / name).read_bytes())
    data[10] ^= 1
    s3_server.fs.pipe(f"{url.removeprefix('s3://')}/{name}", bytes(data))


# --- inspect -------------------------------------------------------------------------------------


def test_inspect_reads_the_manifest_and_the_small_files_only(s3_server, plain, capsys):
    url = s3_server.upload(plain)
    s3_server.requests.clear()
    assert main(["inspect", url, "--decode", "0", *storage_options(s3_server)]) == 0
    small = pinned((plain / "manifest.json").read_bytes())
    assert objects_read(s3_server, url) == {"manifest.json", *small}
    out = capsys.readouterr().out
    assert out.startswith(f"{url}  (gristmill dataset")
    assert "[train] 500 documents" in out


def test_inspect_decoding_reads_the_shards_of_the_documents_it_shows(s3_server, plain, capsys):
    url = s3_server.upload(plain)
    s3_server.requests.clear()
    assert main(["inspect", url, "--decode", "1", *storage_options(s3_server)]) == 0
    small = pinned((plain / "manifest.json").read_bytes())
    read = objects_read(s3_server, url) - {"manifest.json", *small}
    assert read and read <= set(shard_files(plain)[0])
    assert "── train document 0" in capsys.readouterr().out


def test_inspect_json_is_the_local_report(s3_server, dataset, capsys):
    url = s3_server.upload(dataset)
    assert main(["inspect", str(dataset), "--json", "--seq-len", "64,512"]) == 0
    local = json.loads(capsys.readouterr().out)
    args = ["inspect", url, "--json", "--seq-len", "64,512", "--cache-limit", str(1 << 30)]
    assert main([*args, *storage_options(s3_server)]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote.pop("path") == url and local.pop("path") == str(dataset)
    assert remote == local


# --- verify --------------------------------------------------------------------------------------


def test_verify_fetches_and_checks_every_file(s3_server, dataset, capsys):
    url = s3_server.upload(dataset)
    s3_server.requests.clear()
    assert main(["verify", url, "--json", *storage_options(s3_server)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["directory"] == url
    assert objects_read(s3_server, url) == every_file(dataset)
    assert main(["verify", url, *storage_options(s3_server)]) == 0
    assert capsys.readouterr().out.startswith(f"{url}: OK (")


def test_verify_names_a_damaged_object_and_checks_the_others(s3_server, dataset, capsys):
    url = s3_server.upload(dataset)
    first, last = shard_files(dataset)[0][0], shard_files(dataset)[-1][0]
    damage(s3_server, dataset, url, first)
    s3_server.fs.rm(f"{url.removeprefix('s3://')}/{last}")
    assert main(["verify", url, *storage_options(s3_server)]) == 1
    out, err = capsys.readouterr()
    assert f"{first}: downloaded 4 times, never as the manifest lists it (SHA-256" in out
    assert f"({url}/{first})" in out
    assert f"{last}: not found on the server" in out and f"({url}/{last})" in out
    assert f"{url}: 2 problem(s)" in out
    assert "Traceback" not in err


def test_verify_refuses_a_cache_limit_below_the_dataset(s3_server, dataset, capsys, monkeypatch):
    url = s3_server.upload(dataset)
    monkeypatch.setenv(CACHE_LIMIT_VARIABLE, "1000")
    assert main(["verify", url, *storage_options(s3_server)]) == 2
    err = capsys.readouterr().err
    assert f"{url}: verify holds the whole dataset in the mirror" in err
    assert CACHE_LIMIT_VARIABLE in err


# --- export --------------------------------------------------------------------------------------


def test_export_reads_through_the_mirror(s3_server, dataset, tmp_path, gristmill_register, capsys):
    gristmill_register(TokensExporter())
    url = s3_server.upload(dataset)
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["export", str(dataset), "--to", "tokens", "-o", str(local)]) == 0
    args = ["export", url, "--to", "tokens", "-o", str(remote), *storage_options(s3_server)]
    assert main(args) == 0
    assert f"exported {url} to {remote} (tokens)" in capsys.readouterr().out
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in remote.iterdir()) and "train.npy" in names
    for name in set(names) - {"export.json"}:
        assert (remote / name).read_bytes() == (local / name).read_bytes()
    record = json.loads((remote / "export.json").read_text())
    assert record["dataset"] == url
    assert record["splits"] == json.loads((local / "export.json").read_text())["splits"]


def test_export_of_a_damaged_object_exports_nothing(
    s3_server, dataset, tmp_path, gristmill_register, capsys
):
    gristmill_register(TokensExporter())
    url = s3_server.upload(dataset)
    name = shard_files(dataset)[0][0]
    damage(s3_server, dataset, url, name)
    out = tmp_path / "out"
    assert main(["export", url, "--to", "tokens", "-o", str(out), *storage_options(s3_server)]) == 2
    err = capsys.readouterr().err
    assert f"{url}/{name}" in err and "never as the manifest lists it" in err
    assert not out.exists()


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "verify", "export"])
def test_no_dataset_at_the_url_exits_2_naming_it(
    s3_server, command, tmp_path, capsys, gristmill_register
):
    gristmill_register(TokensExporter())
    url = f"s3://{BUCKET}/nothing-here"
    extra = ["--to", "tokens", "-o", str(tmp_path / "out")] if command == "export" else []
    assert main([command, url, *extra, *storage_options(s3_server, SECRET)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gristmill: error: {url}/manifest.json: not found on the server")
    assert SECRET not in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_403_exits_2_and_shows_no_credential(http_server, plain, command, capsys, caplog):
    url = http_server.publish(plain)
    http_server.faults[f"/{url.rsplit('/', 1)[1]}/manifest.json"] = "403"
    with_password = url.replace("http://", f"http://reader:{SECRET}@")
    header = json.dumps({"X-Token": SECRET})
    assert main([command, with_password, "--storage-option", f"headers={header}"]) == 2
    out, err = capsys.readouterr()
    assert f"gristmill: error: {url}/manifest.json: access denied" in err
    assert "check the credentials" in err
    assert all(SECRET not in text for text in (out, err, caplog.text))


def test_no_output_shows_the_credentials(
    http_server, plain, tmp_path, capsys, caplog, gristmill_register
):
    """A password in the URL and a token in the storage options appear nowhere in what inspect,
    verify and export print or log, nor in the export's record."""
    gristmill_register(TokensExporter())
    url = http_server.publish(plain)
    with_password = url.replace("http://", f"http://reader:{SECRET}@")
    option = ["--storage-option", "headers=" + json.dumps({"X-Token": SECRET})]
    assert main(["inspect", with_password, "--json", *option]) == 0
    assert main(["verify", with_password, *option]) == 0
    out = tmp_path / "out"
    assert main(["export", with_password, "--to", "tokens", "-o", str(out), *option]) == 0
    shown = capsys.readouterr()
    assert url in shown.out
    record = (out / "export.json").read_text()
    assert all(SECRET not in text for text in (shown.out, shown.err, caplog.text, record))


def test_an_unreachable_server_exits_2(capsys):
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ds"
    assert main(["verify", url]) == 2
    err = capsys.readouterr().err
    assert f"gristmill: error: {url}/manifest.json: cannot reach the server" in err


MISSING_LIBRARY = """
import sys
sys.modules["s3fs"] = None  # as if it were not installed
from gristmill.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_missing_library_exits_2_naming_the_extra(command):
    done = subprocess.run(
        [sys.executable, "-c", MISSING_LIBRARY, command, "s3://bucket/ds"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "s3://bucket/ds: the s3:// filesystem needs a library" in done.stderr
    assert "pip install 'gristmill[s3]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["inspect", "verify", "export"])
def test_a_local_directory_refuses_the_remote_options(
    plain, command, tmp_path, capsys, gristmill_register
):
    gristmill_register(TokensExporter())
    extra = ["--to", "tokens", "-o", str(tmp_path / "out")] if command == "export" else []
    assert main([command, str(plain), *extra, "--storage-option", "anon=true"]) == 2
    assert "apply to a dataset at a URL" in capsys.readouterr().err
