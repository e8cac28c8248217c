"""Faults at the server give a retry or a clear error, never a wrong sample: a corrupted object,
a connection dropped mid-body, a 403, an unreachable server, a missing library, a dataset
replaced on the server."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError, MissingDependencyError
from gristmill.plugin.remote import Mirror
from tests.remote.test_remote_reading import assert_same_samples


def first_shard(dataset) -> str:
    return gristmill.open_dataset(dataset).manifest["splits"]["train"]["shards"][0]["tokens"][
        "path"
    ]


def test_a_corrupted_object_is_fetched_again_then_refused(s3_server, dataset):
    url = s3_server.upload(dataset)
    name = first_shard(dataset)
    data = bytearray((dataset / name).read_bytes())
    data[10] ^= 1  # still a valid token id: only the hash tells
    s3_server.fs.pipe(f"{url.removeprefix('s3://')}/{name}", bytes(data))
    s3_server.requests.clear()
    with pytest.raises(DatasetError) as error:
        # Opening reads every loss mask (samples without loss), so every shard's files.
        remote = gristmill.open_dataset(url, storage_options=s3_server.options, seq_len=96)
        remote.batch(np.arange(len(remote)))
    message = str(error.value)
    assert f"{url}/{name}" in message
    assert "downloaded 4 times, never as the manifest lists it" in message
    assert "SHA-256" in message
    assert s3_server.requests.count("GET", name) == 4
    root = Mirror(url, storage_options=s3_server.options).root  # where it would have landed
    assert (root / "manifest.json").exists() and not (root / name).exists()


def test_a_connection_dropped_mid_body_is_retried(http_server, dataset, caplog):
    url = http_server.publish(dataset)
    name = first_shard(dataset)
    path = f"/{url.rsplit('/', 1)[1]}/{name}"
    http_server.faults[path] = "drop"
    remote = gristmill.open_dataset(url, seq_len=96, packer="first-fit")
    assert_same_samples(remote, gristmill.open_dataset(dataset, seq_len=96, packer="first-fit"))
    assert http_server.requests.count("GET", path) == 2
    assert f"{url}/{name}: " in caplog.text and "retrying" in caplog.text


def test_a_403_is_not_retried_and_names_the_credentials(http_server, plain):
    url = http_server.publish(plain)
    name = first_shard(plain)
    path = f"/{url.rsplit('/', 1)[1]}/{name}"
    http_server.faults[path] = "403"
    remote = gristmill.open_dataset(url, seq_len=96)
    with pytest.raises(DatasetError, match=r"access denied .*check the credentials") as error:
        remote[0]
    assert f"{url}/{name}" in str(error.value)
    assert http_server.requests.count("GET", path) <= 1  # no retry (a HEAD may answer first)


def test_a_403_on_the_manifest_refuses_the_open(http_server, dataset):
    url = http_server.publish(dataset)
    http_server.faults[f"/{url.rsplit('/', 1)[1]}/manifest.json"] = "403"
    with pytest.raises(DatasetError, match="access denied"):
        gristmill.open_dataset(url)


def test_no_dataset_at_the_url_says_so(http_server):
    with pytest.raises(DatasetError, match=r"not found on the server.*no dataset at"):
        gristmill.open_dataset(f"{http_server.url}/nothing-here")


def test_an_unreachable_server_says_to_check_the_network():
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DatasetError, match=r"cannot reach the server after 4 tries.*offline"):
        gristmill.open_dataset(f"http://127.0.0.1:{port}/ds")


MISSING_LIBRARY = """
import sys
sys.modules[sys.argv[1]] = None  # as if it were not installed
import gristmill
from gristmill.errors import MissingDependencyError
try:
    gristmill.open_dataset(sys.argv[2])
except MissingDependencyError as error:
    print(error)
"""


@pytest.mark.parametrize(
    ("library", "url", "extra"),
    [("s3fs", "s3://bucket/ds", "s3"), ("huggingface_hub", "hf://datasets/org/ds", "hf")],
)
def test_a_missing_library_names_the_extra_to_install(library, url, extra):
    out = subprocess.run(
        [sys.executable, "-c", MISSING_LIBRARY, library, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    protocol = url.split(":")[0]
    assert f"{url}: the {protocol}:// filesystem needs a library" in out.stdout
    assert f"pip install 'gristmill[{extra}]'" in out.stdout


def test_an_unknown_protocol_is_refused():
    with pytest.raises((DatasetError, MissingDependencyError), match="nosuchfs"):
        gristmill.open_dataset("nosuchfs://bucket/ds")


def test_a_dataset_replaced_on_the_server_is_refused_then_read_anew(
    http_server, plain, prepared_dataset
):
    """A reader that opened the old dataset is refused once it reads a shard it had not read;
    opening again serves the new one, and the old files that the new manifest does not list
    are gone."""
    url = http_server.publish(plain)
    old = gristmill.open_dataset(url, seq_len=96)
    old[0]
    other = prepared_dataset(records_other(), tokens_per_shard=4000)
    served = http_server.root / url.rsplit("/", 1)[1]
    for path in sorted(other.rglob("*"), key=lambda p: p.name == "manifest.json"):
        if path.is_file() and ".gristmill-" not in str(path.relative_to(other)):
            target = served / path.relative_to(other)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    new = gristmill.open_dataset(url, seq_len=96)
    assert new.manifest["generation"] != old.manifest["generation"]
    with pytest.raises(DatasetError, match="changed since it was opened"):
        old.batch(np.arange(len(old)))
    assert_same_samples(new, gristmill.open_dataset(other, seq_len=96))
    listed = {e["tokens"]["path"] for e in new.manifest["splits"]["train"]["shards"]}
    held = {p.relative_to(new.path).as_posix() for p in (new.path / "train").glob("*.tokens")}
    assert held <= listed


def records_other() -> list[dict]:
    return [{"prompt": f"q{i}", "completion": "a " * (i % 7 + 1)} for i in range(300)]


def test_no_message_or_file_shows_the_credentials(http_server, plain, caplog):
    """A password in the URL or the storage options appears in no error, log, repr or file of
    the mirror."""
    url = http_server.publish(plain)
    secret = "s3cr3t-pa55"
    with_password = url.replace("http://", f"http://reader:{secret}@")
    options = {"headers": {"X-Token": secret}}
    ds = gristmill.open_dataset(with_password, seq_len=96, storage_options=options)
    http_server.faults[f"/{url.rsplit('/', 1)[1]}/{first_shard(plain)}"] = "403"
    with pytest.raises(DatasetError) as error:
        ds[0]
    shown = [str(error.value), caplog.text, repr(ds), repr(ds.options), repr(ds.mirror)]
    assert url in str(error.value) and all(secret not in text for text in shown)
    for path in ds.path.rglob("*"):
        assert path.is_dir() or secret.encode() not in path.read_bytes()


def test_a_copy_damaged_in_the_mirror_is_fetched_again(http_server, plain):
    """A shard file changed in the mirror after it landed is never served: its check at first
    read fails, and the reader fetches it again from the server."""
    url = http_server.publish(plain)
    first = gristmill.open_dataset(url, seq_len=96)
    first.batch(np.arange(len(first)))
    name = first_shard(plain)
    copy = first.path / name
    data = bytearray(copy.read_bytes())
    data[10] ^= 1  # a valid token id still: only the hash tells
    copy.write_bytes(bytes(data))
    again = gristmill.open_dataset(url, seq_len=96)
    assert_same_samples(again, gristmill.open_dataset(plain, seq_len=96))
    assert http_server.requests.count("GET", name) == 2
    assert copy.read_bytes() == (plain / name).read_bytes()


def test_a_damaged_local_dataset_is_still_refused(plain, tmp_path):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(plain, copy)
    name = first_shard(plain)
    data = bytearray((copy / name).read_bytes())
    data[10] ^= 1
    (copy / name).write_bytes(bytes(data))
    ds = gristmill.open_dataset(copy, seq_len=96)
    with pytest.raises(DatasetError, match="the manifest says"):
        ds.batch(np.arange(len(ds)))
