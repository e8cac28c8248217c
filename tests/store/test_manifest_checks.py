"""The manifest's shard entries are checked at every open in a few passes that run in C: any
entry the detailed check would report still is, whatever shard and field it is in."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.store.manifest import _well_formed, manifest_problems

BAD_COUNTS = [-1, True, 1.0, "3", None]
BAD_FIELDS = {
    "path": ["", None, 3],
    "bytes": [-8, False, 8.0, "8", None],
    "sha256": ["a" * 63, "a" * 65, "A" * 64, "g" * 64, "é" * 64, None, 7],
}


@pytest.fixture(scope="module")
def manifest(prepared_dataset):
    records = [{"prompt": f"q{i}?", "completion": " a" * (i % 9 + 1)} for i in range(200)]
    path = prepared_dataset(records, tokens_per_shard=200)
    found = json.loads((path / "manifest.json").read_text())
    assert len(found["splits"]["train"]["shards"]) > 5
    return found


def test_a_well_formed_manifest_takes_the_fast_check(manifest):
    assert _well_formed(manifest["splits"]["train"]["shards"])
    assert list(manifest_problems(manifest)) == []


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(data=st.data())
def test_every_malformed_shard_entry_is_reported(manifest, data):
    broken = copy.deepcopy(manifest)
    shards = broken["splits"]["train"]["shards"]
    k = data.draw(st.integers(0, len(shards) - 1), label="shard")
    shard = shards[k]
    files = [name for name, value in shard.items() if isinstance(value, dict)]
    where = data.draw(st.sampled_from(["count", "file", "missing", "entry"]), label="where")
    if where == "count":
        key = data.draw(st.sampled_from(["num_documents", "num_tokens", "num_loss_tokens"]))
        shard[key] = data.draw(st.sampled_from(BAD_COUNTS))
        expected = f"splits.train.shards[{k}].{key}"
    elif where == "file":
        name = data.draw(st.sampled_from(files), label="file")
        field = data.draw(st.sampled_from(sorted(BAD_FIELDS)), label="field")
        shard[name][field] = data.draw(st.sampled_from(BAD_FIELDS[field]), label="value")
        expected = f"splits.train.shards[{k}].{name}.{field}"
    elif where == "missing":
        key = data.draw(st.sampled_from(["num_tokens", "num_documents"]))
        del shard[key]
        expected = f"splits.train.shards[{k}].{key}"
    else:
        shards[k] = data.draw(st.sampled_from([None, [], "shard"]))
        expected = f"splits.train.shards[{k}]"
    assert not _well_formed(shards)
    assert expected in [key for key, _ in manifest_problems(broken)]


def test_counts_that_disagree_are_reported_at_their_shard(manifest):
    broken = copy.deepcopy(manifest)
    shards = broken["splits"]["train"]["shards"]
    for k in (1, 4):
        shards[k]["num_loss_tokens"] = shards[k]["num_tokens"] + k
    broken["splits"]["train"]["num_loss_tokens"] = sum(s["num_loss_tokens"] for s in shards)
    broken["splits"]["train"]["num_documents"] += 1
    assert list(manifest_problems(broken)) == [
        (f"splits.train.shards[{k}].num_loss_tokens", f"{n + k}, more than its {n} tokens")
        for k, n in ((1, shards[1]["num_tokens"]), (4, shards[4]["num_tokens"]))
    ] + [
        (
            "splits.train.num_documents",
            f"{broken['splits']['train']['num_documents']}, but the shards add up to "
            f"{broken['splits']['train']['num_documents'] - 1}",
        )
    ]
