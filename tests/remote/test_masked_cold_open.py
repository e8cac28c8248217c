"""A cold open of a remote dataset with loss masks downloads no shard file: the samples without
loss are found from the split's loss index, and the first batch fetches only its own shards."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import gristmill


def _shard_gets(served) -> list[str]:
    return sorted(p for p in served.requests.by_path("GET") if p.split("/")[2] == "train")


@pytest.mark.parametrize("packer", ["none", "first-fit", "concat-chunk"])
def test_a_cold_masked_open_downloads_no_shard_file(http_server, dataset, packer):
    url = http_server.publish(dataset)
    local = gristmill.open_dataset(dataset, seq_len=96, packer=packer, overlong="truncate")
    http_server.requests.clear()
    remote = gristmill.open_dataset(url, seq_len=96, packer=packer, overlong="truncate")
    assert _shard_gets(http_server) == []
    assert remote.samples_without_loss == local.samples_without_loss
    assert np.array_equal(remote.plan.sample_bounds, local.plan.sample_bounds)
    remote.batch(np.array([0]))
    # The first batch fetches its own shards' files, and nothing else.
    shards = set(remote.documents.shards_of(remote.documents_of(0)).tolist())
    expected = sorted(f"/{e['path']}" for k in shards for e in remote.shard_files(k))
    assert [p.split("/", 2)[2] for p in _shard_gets(http_server)] == [p[1:] for p in expected]
    assert len(shards) < len(remote.manifest["splits"]["train"]["shards"])


def test_no_loss_drop_and_the_warning_are_the_local_datasets(http_server, dataset, caplog):
    url = http_server.publish(dataset)
    options = {"seq_len": 24, "packer": "none", "overlong": "truncate"}
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        local = gristmill.open_dataset(dataset, **options)
    expected = [r.getMessage().split(": ", 1)[1] for r in caplog.records if "carry no" in r.message]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        remote = gristmill.open_dataset(url, **options)
    got = [r.getMessage().split(": ", 1)[1] for r in caplog.records if "carry no" in r.message]
    assert local.samples_without_loss > 0 and got == expected
    assert remote.samples_without_loss == local.samples_without_loss
    assert _shard_gets(http_server) == []
    kept = gristmill.open_dataset(dataset, **options, no_loss="drop")
    dropped = gristmill.open_dataset(url, **options, no_loss="drop")
    assert len(dropped) == len(kept) == len(local) - local.samples_without_loss
    assert np.array_equal(dropped.plan.seg_doc, kept.plan.seg_doc)
