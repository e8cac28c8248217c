"""``prepare`` to a URL: the dataset is prepared in a scratch directory and uploaded to the S3
server on loopback, the manifest last; an interrupted upload resumes with what is missing; a
dataset already there is up to date or refused as a local one is; a 403 is a clear error."""

from __future__ import annotations

import fcntl
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
ERRORS = {
    403: ("403 Forbidden", "AccessDenied"),
    500: ("500 Internal Server Error", "InternalError"),
}


class FailedPuts:
    """The S3 server's application, answering ``status`` to the PUTs of paths that end with
    ``ending``, after the first ``allowed`` of them, ``times`` times."""

    def __init__(self, app: Callable[..., Any], allowed: int, status: int, ending: str, times: int):
        self.app = app
        self.allowed, self.status, self.ending, self.times = allowed, status, ending, times
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].endswith(self.ending):
            with self.lock:
                failed = self.allowed <= 0 and self.times > 0
                self.allowed -= 1
                self.times -= failed
            if failed:
                line, code = ERRORS[self.status]
                start_response(line, [("Content-Type", "application/xml")])
                return [f"<Error><Code>{code}</Code><Message>{line}</Message></Error>".encode()]
        return self.app(environ, start_response)


@pytest.fixture
def fail_puts(s3_server, monkeypatch) -> Callable[..., None]:
    """``fail_puts(allowed, status=403, ending="", times=∞)``: see :class:`FailedPuts`."""
    app = s3_server.server.app

    def fail(allowed: int, status: int = 403, ending: str = "", times: int = 1 << 30) -> None:
        monkeypatch.setattr(
            s3_server.server, "app", FailedPuts(app, allowed, status, ending, times)
        )

    return fail


def fresh_url() -> str:
    import uuid

    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def source(dataset: Path) -> Path:
    """The records the session's dataset was prepared from (the conftest's fixtures)."""
    return dataset.parent / "data.jsonl"


def prepare(s3_server, dataset: Path, url: str, **options: Any) -> dict[str, Any]:
    defaults = {"storage_options": s3_server.options, "tokens_per_shard": 4000, "progress": False}
    return gristmill.prepare(source(dataset), url, **{**defaults, **options})


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


def test_the_upload_shows_a_progress_bar_and_a_summary(s3_server, dataset, capsys, caplog):
    caplog.set_level(logging.INFO, logger="gristmill")
    url = fresh_url()
    manifest = prepare(s3_server, dataset, url, progress=True)
    assert "upload: 100%" in capsys.readouterr().err
    assert f"{url}: uploaded {len(listed(manifest)) + 1:,} file(s), " in caplog.text


def test_a_config_file_gives_the_storage_options_and_keeps_the_scratch_copy(
    s3_server, dataset, tmp_path
):
    url = fresh_url()
    client = s3_server.options["client_kwargs"]
    (tmp_path / "run.toml").write_text(
        f"""[prepare]
sources = ["{source(dataset)}"]
output = "{url}"
tokens_per_shard = 4000
keep_scratch = true
progress = false
storage_options = {{key = "testing", secret = "testing", client_kwargs = {{endpoint_url = \
"{client["endpoint_url"]}", region_name = "{client["region_name"]}"}}}}
""",
        encoding="utf-8",
    )
    assert main(["prepare", "--config", str(tmp_path / "run.toml")]) == 0
    scratch = scratch_dir(url, PrepareOptions(storage_options=s3_server.options))
    remote = gristmill.open_dataset(url, storage_options=s3_server.options, seq_len=96)
    assert_same_samples(remote, gristmill.open_dataset(scratch / "dataset", seq_len=96))


def test_an_interrupted_upload_sends_only_the_rest(s3_server, dataset, fail_puts, caplog):
    caplog.set_level(logging.INFO, logger="gristmill")
    url = fresh_url()
    fail_puts(3)
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

    with pytest.raises(DatasetError, match="holds a prepare or upload of other sources"):
        prepare(s3_server, dataset, url, tokens_per_shard=2000)  # and leaves the scratch as it was
    fail_puts(0, times=0)
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
    assert (
        prepare(s3_server, dataset, url, tokens_per_shard=2000) == old
    )  # the refusal left nothing
    assert written(s3_server, url) == []
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


def test_a_failed_put_is_retried_then_a_clear_error(s3_server, dataset, fail_puts, caplog):
    """With the client's own retries off, a server error reaches gristmill's: the file is sent
    again; where it keeps failing, the error says so and that the same command resumes."""
    options = {**s3_server.options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    url = fresh_url()
    fail_puts(0, status=500, ending="byte.json", times=2)
    prepare(s3_server, dataset, url, storage_options=options)
    assert f"{url}/tokenizer/byte.json: " in caplog.text and "retrying" in caplog.text
    remote = gristmill.open_dataset(url, storage_options=options, seq_len=96)
    assert_same_samples(remote, gristmill.open_dataset(dataset, seq_len=96))
    fail_puts(0, status=500, ending="byte.json")
    with pytest.raises(DatasetError, match=r"failed 4 times.*the same command resumes") as error:
        prepare(s3_server, dataset, fresh_url(), storage_options=options)
    assert "tokenizer/byte.json" in str(error.value)


def test_a_403_is_a_clear_error_and_exit_2(s3_server, dataset, fail_puts, capsys):
    url = fresh_url()
    fail_puts(0)
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
    assert "testing" not in err  # the key and the secret


def test_the_options_repr_shows_no_storage_options():
    options = PrepareOptions(storage_options={"secret": "s3cr3t"})
    assert "s3cr3t" not in repr(options) and "storage_options" not in repr(options)


def test_an_unreachable_server_says_so(s3_libraries, dataset):
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-west-2"},
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    url = fresh_url()
    for _ in range(2):  # the same again: the first left no lock behind
        with pytest.raises(DatasetError, match=r"cannot reach the server after 4 tries"):
            gristmill.prepare(source(dataset), url, storage_options=options, progress=False)


def test_a_second_upload_of_one_url_at_once_is_refused(s3_server, dataset):
    url = fresh_url()
    scratch = scratch_dir(url, PrepareOptions(storage_options=s3_server.options))
    scratch.mkdir(parents=True)
    with open(scratch / "upload.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DatasetError, match="another gristmill prepare on this machine"):
            prepare(s3_server, dataset, url)


def test_a_prefix_of_other_objects_is_refused_unless_overwrite(s3_server, dataset):
    url = fresh_url()
    s3_server.fs.pipe(f"{url.removeprefix('s3://')}/notes.txt", b"not a dataset")
    with pytest.raises(DatasetError, match="holds objects but no gristmill dataset"):
        prepare(s3_server, dataset, url)
    prepare(s3_server, dataset, url, overwrite=True)
    assert s3_server.fs.cat(f"{url.removeprefix('s3://')}/notes.txt") == b"not a dataset"
    remote = gristmill.open_dataset(url, storage_options=s3_server.options, seq_len=96)
    assert_same_samples(remote, gristmill.open_dataset(dataset, seq_len=96))


def test_remote_options_with_a_local_output_are_refused(dataset, tmp_path):
    with pytest.raises(DatasetError, match="storage_options apply to an output at a URL"):
        gristmill.prepare(source(dataset), tmp_path / "out", storage_options={"anon": True})
    with pytest.raises(DatasetError, match="keep_scratch apply to an output at a URL"):
        gristmill.prepare(source(dataset), tmp_path / "out", keep_scratch=True)
    assert not (tmp_path / "out").exists()


def test_http_urls_are_refused_as_an_output(http_server, dataset):
    with pytest.raises(DatasetError, match="cannot upload to them"):
        gristmill.prepare(source(dataset), f"{http_server.url}/ds", progress=False)
