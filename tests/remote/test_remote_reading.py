"""A dataset read from an S3-compatible server or over HTTP serves the samples the local dataset
does, with one manifest read per open and no listing of the bucket."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError

PACKERS = ["none", "first-fit", "greedy-stream", "window", "concat-chunk"]


def assert_same_samples(remote: gristmill.Dataset, local: gristmill.Dataset) -> None:
    assert len(remote) == len(local) > 0
    everything = np.arange(len(local))
    for got, expected in zip(remote.batch(everything), local.batch(everything)):
        assert got.keys() == expected.keys()
        for key in expected:
            assert np.array_equal(got[key], expected[key]), key
    for i in (0, len(local) // 2, len(local) - 1):  # one at a time, as ds[i] builds it
        for key, value in local[i].items():
            assert np.array_equal(remote[i][key], value), key


@pytest.mark.parametrize("packer", PACKERS)
def test_samples_read_from_s3_are_the_local_datasets(s3_server, dataset, packer):
    url = s3_server.upload(dataset)
    options = {"seq_len": 96, "packer": packer}
    remote = gristmill.open_dataset(url, storage_options=s3_server.options, **options)
    assert_same_samples(remote, gristmill.open_dataset(dataset, **options))
    assert repr(remote).startswith(f"Dataset({url!r}")
    assert remote.metadata(7) == {"lang": "fr", "i": 7}
    assert remote.tokenizer.decode(remote[0]["input_ids"].tolist())


@pytest.mark.parametrize("packer", ["none", "first-fit"])
def test_samples_read_over_http_are_the_local_datasets(http_server, dataset, packer):
    url = http_server.publish(dataset)
    remote = gristmill.open_dataset(url, seq_len=96, packer=packer, segment_metadata=["lang"])
    local = gristmill.open_dataset(dataset, seq_len=96, packer=packer, segment_metadata=["lang"])
    assert_same_samples(remote, local)
    assert remote[3]["metadata"] == local[3]["metadata"]


def test_credentials_and_endpoint_come_from_the_environment(s3_server, dataset, monkeypatch):
    """No storage options: s3fs finds the endpoint and the keys where it always does."""
    url = s3_server.upload(dataset)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    remote = gristmill.open_dataset(url, seq_len=96, packer="first-fit")
    assert_same_samples(remote, gristmill.open_dataset(dataset, seq_len=96, packer="first-fit"))


def test_the_manifest_is_fetched_once_per_open_and_the_bucket_never_listed(s3_server, dataset):
    url = s3_server.upload(dataset)
    prefix = url.removeprefix("s3://")
    s3_server.requests.clear()
    for opens in (1, 2):
        ds = gristmill.open_dataset(url, storage_options=s3_server.options, seq_len=96)
        ds.batch(np.arange(len(ds)))
        assert s3_server.requests.count("GET", f"{prefix}/manifest.json") == opens
    listings = [
        (m, p)
        for m, p in s3_server.requests.seen
        if "list-type" in p or "prefix=" in p or p.rstrip("/").endswith(prefix.split("/")[0])
    ]
    assert listings == []
    # Every shard file was downloaded once over both opens: the second found them in the mirror.
    gets = s3_server.requests.by_path("GET")
    shard_files = [p for p in gets if "/train/" in p]
    assert shard_files and all(gets[p] == 1 for p in shard_files)


def test_a_pickled_remote_dataset_opens_again_from_its_url(http_server, dataset):
    url = http_server.publish(dataset)
    remote = gristmill.open_dataset(url, seq_len=96, packer="first-fit")
    copy = pickle.loads(pickle.dumps(remote))
    assert copy.source == url and copy.path == remote.path
    assert_same_samples(copy, gristmill.open_dataset(dataset, seq_len=96, packer="first-fit"))


def test_a_local_directory_refuses_the_remote_options(dataset):
    with pytest.raises(DatasetError, match="storage_options apply to a dataset at a URL"):
        gristmill.open_dataset(dataset, storage_options={"anon": True})
    with pytest.raises(DatasetError, match="cache_limit apply to a dataset at a URL"):
        gristmill.open_dataset(dataset, cache_limit=1 << 20)


def test_a_file_url_is_a_local_directory(dataset):
    ds = gristmill.open_dataset(f"file://{dataset}", seq_len=96)
    assert ds.mirror is None and ds.path == dataset


def test_importing_gristmill_and_the_shard_reader_loads_no_remote_library():
    probe = (
        "import sys, gristmill, gristmill.serve.dataset, gristmill_memmap_shards.reader; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fsspec', 's3fs', 'gcsfs', 'aiohttp', 'botocore', 'aiobotocore')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_torch_loader_with_workers_serves_the_local_batches(http_server, dataset, context):
    torch = pytest.importorskip("torch", reason="the loader test needs torch (tox -e remote)")
    from gristmill.torch import dataloader

    url = http_server.publish(dataset)
    batches = []
    for path in (url, dataset):
        ds = gristmill.open_dataset(path, seq_len=96, packer="first-fit")
        loader = dataloader(
            ds, batch_size=4, rank=1, world_size=2, num_workers=2, multiprocessing_context=context
        )
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) > 0
    for got, expected in zip(*batches):
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key


def test_a_mixture_of_remote_and_local_datasets(http_server, dataset, plain):
    url = http_server.publish(plain)
    mixed = [
        gristmill.mixture(
            {
                "a": gristmill.open_dataset(dataset, seq_len=96),
                "b": gristmill.open_dataset(b, seq_len=96),
            },
            weights={"a": 1, "b": 2},
        )
        for b in (url, plain)
    ]
    assert len(mixed[0]) == len(mixed[1]) > 0
    assert mixed[0].identity == mixed[1].identity  # the same samples, wherever they are read
    everything = np.arange(len(mixed[1]))
    for got, expected in zip(mixed[0].batch(everything), mixed[1].batch(everything)):
        for key, value in expected.items():
            assert np.array_equal(got[key], value), key


def test_a_whole_mirror_verifies_as_the_dataset(s3_server, dataset):
    from gristmill.plugin.remote import open_mirror
    from gristmill.store.verify import verify

    url = s3_server.upload(dataset)
    root = open_mirror(url, storage_options=s3_server.options).fetch_all()
    assert (root / "manifest.json").read_bytes() == (dataset / "manifest.json").read_bytes()
    assert verify(root) == []  # nothing missing, nothing unlisted, every hash the manifest's
