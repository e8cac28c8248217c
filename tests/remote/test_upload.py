"""``prepare`` to a URL: the dataset is prepared in a scratch directory and uploaded to the S3
server on loopback, the manifest last; an interrupted upload resumes with what is missing; a
dataset already there is up to date or refused as a local one is; a 403 is a clear error."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gristmill
from gristmill.cli.main import main
from gristmill.errors import DatasetError
from gristmill.options import PrepareOptions
from gristmill.store.upload import JOURNAL, scratch_dir
from tests.remote.conftest import BUCKET
from tests.remote.test_remote_reading import assert_same_samples

WRITES = ("PUT", "POST", "DELETE")
DENIED = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
    b"<Message>Access Denied</Message></Error>"
)


class RefusedPuts:
    """The S3 server's application, answering 403 to every PUT after the first ``allowed``."""

    def __init__(self, app: Callable[..., Any], allowed: int):
        self.app = app
        self.allowed = allowed
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] == "PUT":
            with self.lock:
                refused = self.allowed <= 0
                self.allowed -= 1
            if refused:
                start_response("403 Forbidden", [("Content-Type", "application/xml")])
                return [DENIED]
        return self.app(environ, start_response)


@pytest.fixture
def refuse_puts(s3_server, monkeypatch) -> Callable[[int], None]:
    """``refuse_puts(n)``: the server accepts ``n`` more PUTs, then refuses every one."""

    app = s3_server.server.app

    def refuse(allowed: int) -> None:
        monkeypatch.setattr(s3_server.server, "app", RefusedPuts(app, allowed))

    return refuse


def fresh_url() -> str:
    import uuid

    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def source(dataset: Path) -> Path:
    """The records the session's dataset was prepared from (the conftest's fixtures)."""
    return dataset.parent / "data.jsonl"


def prepare(s3_server, dataset: Path, url: str, **options: Any) -> dict[str, Any]:
    return gristmill.prepare(
        source(dataset),
        url,
        storage_options=s3_server.options,
        progress=False,
        **{"tokens_per_shard": 4000, **options},
    )


def written(s3_server, url: str) -> list[tuple[str, str]]:
    """The writes the server answered under ``url``'s prefix, in order: (method, path in it)."""
    prefix = "/" + url.removeprefix("s3://") + "/"
    return [
        (method, path.split("?")[0].removeprefix(prefix))
        for method, path in s3_server.requests.seen
        if method in WRITES and path.startswith(prefix)
    ]


def listed(manifest: dict[str, Any]) -> set[str]:
    from gristmill.store.manifest import listed_files

    return {entry["path"] for entry in listed_files(manifest)}


def test_prepared_to_s3_serves_the_local_datasets_samples(s3_server, dataset):
    url = fresh_url()
    s3_server.requests.clear()
    manifest = prepare(s3_server, dataset, url)
    local = gristmill.open_dataset(dataset, seq_len=96, packer="first-fit")
    remote = gristmill.open_dataset(
        url, storage_options=s3_server.options, seq_len=96, packer="first-fit"
    )
    assert_same_samples(remote, local)
    assert manifest["fingerprint"] == local.manifest["fingerprint"]
    assert remote.manifest["generation"] == manifest["generation"]
    # The manifest is the last object written, once, after every file it lists.
    writes = written(s3_server, url)
    assert writes[-1] == ("PUT", "manifest.json")
    assert [w for w in writes if w[1] == "manifest.json"] == [("PUT", "manifest.json")]
    assert {path for _, path in writes[:-1]} == listed(manifest)
    assert len(writes) == len(listed(manifest)) + 1  # one request per file: none sent twice
    # The scratch directory is gone.
    scratch = scratch_dir(url, PrepareOptions(storage_options=s3_server.options))
    assert not (scratch / "dataset").exists() and not (scratch / JOURNAL).exists()


def test_the_scratch_copy_is_kept_when_asked(s3_server, dataset):
    url = fresh_url()
    prepare(s3_server, dataset, url, keep_scratch=True)
    scratch = scratch_dir(url, PrepareOptions(storage_options=s3_server.options))
    kept = gristmill.open_dataset(scratch / "dataset", seq_len=96)
    assert_same_samples(kept, gristmill.open_dataset(dataset, seq_len=96))


def test_an_interrupted_upload_sends_only_the_rest(s3_server, dataset, refuse_puts, caplog):
    caplog.set_level(logging.INFO, logger="gristmill")
    url = fresh_url()
    refuse_puts(3)
    s3_server.requests.clear()
    with pytest.raises(DatasetError, match="access denied"):
        prepare(s3_server, dataset, url)
    before = {path for _, path in written(s3_server, url)}
    assert len(before) == 3 and "manifest.json" not in before
    with pytest.raises(DatasetError, match="no dataset at"):  # a reader sees none
        gristmill.open_dataset(url, storage_options=s3_server.options)
    scratch = scratch_dir(url, PrepareOptions(storage_options=s3_server.options))
    lines = (scratch / JOURNAL).read_text().splitlines()
    assert {json.loads(line)["path"] for line in lines[1:]} == before
    # A journal entry that is not the local file's: that file is sent again.
    changed = json.loads(lines[1])
    lines[1] = json.dumps({**changed, "sha256": "0" * 64})
    (scratch / JOURNAL).write_text("\n".join(lines) + "\n")

    refuse_puts(10_000)
    s3_server.requests.clear()
    manifest = prepare(s3_server, dataset, url)
    again = [path for _, path in written(s3_server, url)]
    assert again[-1] == "manifest.json"
    assert set(again) == listed(manifest) - before | {changed["path"], "manifest.json"}
    assert len(again) == len(set(again))
    assert "already prepared" in caplog.text  # the scratch copy was not prepared again
    remote = gristmill.open_dataset(url, storage_options=s3_server.options, seq_len=96)
    assert_same_samples(remote, gristmill.open_dataset(dataset, seq_len=96))


def test_a_dataset_already_there_is_not_uploaded_again(s3_server, dataset, caplog):
    caplog.set_level(logging.INFO, logger="gristmill")
    url = fresh_url()
    first = prepare(s3_server, dataset, url)
    s3_server.requests.clear()
    again = prepare(s3_server, dataset, url)
    assert again["generation"] == first["generation"]
    assert written(s3_server, url) == []
    assert f"{url}: already prepared from these sources and settings" in caplog.text


def test_another_dataset_there_is_refused_then_replaced_with_overwrite(s3_server, dataset):
    url = fresh_url()
    old = prepare(s3_server, dataset, url, tokens_per_shard=2000)
    with pytest.raises(DatasetError, match="already holds a dataset prepared from other"):
        prepare(s3_server, dataset, url)
    s3_server.requests.clear()
    new = prepare(s3_server, dataset, url, overwrite=True)
    writes = written(s3_server, url)
    assert writes[0] == ("DELETE", "manifest.json")  # before anything else changes
    stale = listed(old) - listed(new)
    assert stale and {path for method, path in writes if method == "DELETE"} == stale | {
        "manifest.json"
    }
    assert writes.index(("PUT", "manifest.json")) < min(
        writes.index(("DELETE", path)) for path in stale
    )
    remote = gristmill.open_dataset(url, storage_options=s3_server.options, seq_len=96)
    assert remote.manifest["generation"] == new["generation"]
    assert_same_samples(remote, gristmill.open_dataset(dataset, seq_len=96))


def test_a_403_is_a_clear_error_and_exit_2(s3_server, dataset, refuse_puts, capsys):
    url = fresh_url()
    refuse_puts(0)
    client = json.dumps(s3_server.options["client_kwargs"])
    status = main(
        [
            "prepare",
            str(source(dataset)),
            "-o",
            url,
            "--storage-option",
            "key=testing",
            "--storage-option",
            "secret=testing",
            "--storage-option",
            f"client_kwargs={client}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "gristmill: error: " in err and "Traceback" not in err
    assert f"{url}/" in err and "access denied" in err and "check the credentials" in err


def test_an_unreachable_server_says_so(dataset):
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-west-2"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(DatasetError, match=r"cannot reach the server after 4 tries"):
        gristmill.prepare(source(dataset), fresh_url(), storage_options=options, progress=False)


def test_remote_options_with_a_local_output_are_refused(dataset, tmp_path):
    with pytest.raises(DatasetError, match="storage_options apply to an output at a URL"):
        gristmill.prepare(source(dataset), tmp_path / "out", storage_options={"anon": True})
    with pytest.raises(DatasetError, match="keep_scratch apply to an output at a URL"):
        gristmill.prepare(source(dataset), tmp_path / "out", keep_scratch=True)
    assert not (tmp_path / "out").exists()


def test_http_urls_are_refused_as_an_output(http_server, dataset):
    with pytest.raises(DatasetError, match="cannot upload to them"):
        gristmill.prepare(source(dataset), f"{http_server.url}/ds", progress=False)
