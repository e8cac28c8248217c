"""Each packed sample's segments carry the metadata of the documents they come from."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

import gristmill
from gristmill.errors import DatasetError

LANGS = ["en", "fr", "de", "nl"]


def _records(count: int = 400, seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "text": f"doc {i} " + "token " * rng.randint(0, 70),
            "metadata": {"lang": LANGS[i % 4], "i": i, "score": i / 3, "even": i % 2 == 0},
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("segments")
    src = root / "data.jsonl"
    import json

    src.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    gristmill.prepare(src, root / "ds", val_fraction=0.25, progress=False)
    return root / "ds"


PACKINGS = {
    "none": {},
    "first-fit": {"packer": "first-fit", "seq_len": 160},
    "first-fit/fragment": {"packer": "first-fit", "seq_len": 64, "overlong": "fragment"},
    "greedy-stream": {"packer": "greedy-stream", "seq_len": 160},
    "window": {"packer": "window", "seq_len": 160},
    "concat-chunk": {"packer": "concat-chunk", "seq_len": 100},
    "shifted": {"packer": "first-fit", "seq_len": 161, "labels": "shifted"},
}


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("packing", sorted(PACKINGS))
def test_segments_carry_their_documents_metadata(dataset, packing, split):
    ds = gristmill.open_dataset(dataset, split, **PACKINGS[packing])
    batch = ds.batch(np.arange(len(ds)))
    rows = [ds.metadata(d) for d in range(ds.manifest["splits"][split]["num_documents"])]
    for k in range(len(batch)):
        docs = batch.documents_of(k)
        assert docs.tolist() == ds.documents_of(k).tolist()
        assert len(docs) == len(
            ds.plan.seg_doc[ds.plan.sample_bounds[k] : ds.plan.sample_bounds[k + 1]]
        )
        decoded = batch.metadata_of(k, decode=True)
        for key in ds.metadata_columns:
            assert decoded[key] == [rows[d][key] for d in docs.tolist()]
        stored = batch.metadata_of(k, ["lang", "score"])
        assert stored["lang"].dtype == np.int32
        assert np.array_equal(stored["score"], ds.metadata_values("score", docs))
        # The segment's tokens are its document's: its record's number leads its text.
        if ds.plan.seg_start[ds.plan.sample_bounds[k]] == 0 and packing != "shifted":
            first = ds.tokenizer.decode(ds[k]["input_ids"][:12].tolist())
            assert first.startswith(f"doc {decoded['i'][0]} ")


def test_split_batches_and_repeats_keep_their_segments(dataset):
    ds = gristmill.open_dataset(dataset, seq_len=160, packer="first-fit")
    batch = ds.batch([3, 1, 4, 1, 5])
    expected = [ds.documents_of(i).tolist() for i in (3, 1, 4, 1, 5)]
    parts = batch.split([2, 3])
    assert [p.documents_of(k).tolist() for p in parts for k in range(len(p))] == expected
    assert parts[1].metadata_of(0, ["i"])["i"].tolist() == [
        ds.metadata(d)["i"] for d in expected[2]
    ]
    marked = batch.with_repeats([0])
    assert [marked.documents_of(k).tolist() for k in range(5)] == expected


def test_samples_carry_metadata_only_when_asked(dataset):
    plain = gristmill.open_dataset(dataset, seq_len=160, packer="first-fit")
    asked = gristmill.open_dataset(
        dataset, seq_len=160, packer="first-fit", segment_metadata=["lang", "even"]
    )
    assert "metadata" not in plain[0]
    sample = asked[0]
    docs = asked.documents_of(0).tolist()
    assert sample["metadata"] == {
        "lang": [LANGS[asked.metadata(d)["i"] % 4] for d in docs],
        "even": [asked.metadata(d)["i"] % 2 == 0 for d in docs],
    }
    for key in ("input_ids", "labels", "position_ids", "seq_lens"):
        assert np.array_equal(sample[key], plain[0][key])
    assert asked.batch([0, 1])[1]["metadata"] == asked[1]["metadata"]
    with pytest.raises(DatasetError, match="segment_metadata names 'url'"):
        gristmill.open_dataset(dataset, segment_metadata=["url"])


def test_a_column_selects_documents_by_value(dataset):
    ds = gristmill.open_dataset(dataset)
    codes = ds.metadata_values("lang")
    french = np.flatnonzero(codes == ds.metadata_code("lang", "fr"))
    assert [ds.metadata(int(d))["i"] % 4 for d in french] == [1] * len(french)
    assert len(french) and ds.metadata_values("even")[french].tolist() == [0] * len(french)


def test_a_stream_carries_its_segments_metadata(tmp_path, write_jsonl):
    src = write_jsonl([{**r, "site": f"s{r['metadata']['i'] % 3}"} for r in _records(150)])
    options = dict(seq_len=160, chunk_bytes=2048, piece_bytes=4096, metadata_columns=["site"])
    plain = list(gristmill.stream(src, **options))
    stream = gristmill.stream(src, segment_metadata=["i", "site", "missing"], **options)
    asked = list(stream)
    assert "metadata" not in plain[0] and len(asked) == len(plain) > 1
    seen = []
    for sample, same in zip(asked, plain):
        for key in ("input_ids", "labels", "position_ids", "seq_lens"):
            assert np.array_equal(sample[key], same[key])
        found = sample["metadata"]
        assert len(found["i"]) == len(sample["seq_lens"])
        assert found["missing"] == [None] * len(found["i"])
        starts = np.cumsum(sample["seq_lens"]) - sample["seq_lens"]
        for i, site, start in zip(found["i"], found["site"], starts.tolist()):
            text = stream.tokenizer.decode(sample["input_ids"][start : start + 8].tolist())
            assert text.startswith(f"doc {i} ")
            assert site == f"s{i % 3}"
        seen += found["i"]
    assert sorted(seen) == list(range(150))
    # A chunk tokenized in a DataLoader worker crosses to the packing process pickled.
    chunk = pickle.loads(pickle.dumps(stream.read(stream.pieces[0][0])))
    assert [dict(d.metadata)["i"] for d in chunk.documents[:3]] == [0, 1, 2]


def test_segment_metadata_is_a_config_key(dataset, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'[dataset]\npath = "{dataset}"\nseq_len = 160\npacker = "first-fit"\n'
        'segment_metadata = ["lang"]\n'
    )
    ds = gristmill.from_config(config).data()
    assert ds[0]["metadata"] == {"lang": [ds.metadata(d)["lang"] for d in ds.documents_of(0)]}


@pytest.mark.parametrize("padding_free", [False, True])
@pytest.mark.parametrize("labels", ["unshifted", "shifted"])
def test_the_collator_puts_each_tokens_document_metadata_in_the_batch(
    dataset, padding_free, labels
):
    torch = pytest.importorskip("torch", reason="the collator needs torch")
    from gristmill.torch import Collator, dataloader

    ds = gristmill.open_dataset(dataset, seq_len=161, packer="first-fit", labels=labels)
    collate = Collator(padding_free=padding_free, metadata=["i", "lang", "score"])
    picked = [5, 0, 7, 2]
    plain = Collator(padding_free=padding_free)(ds.batch(picked))
    batch = collate(ds.batch(picked))
    assert set(batch) - set(plain) == {"metadata"}
    for key, value in plain.items():  # the rest of the batch as without metadata
        assert torch.equal(batch[key], value) if torch.is_tensor(value) else batch[key] == value
    found = batch["metadata"]
    assert found["i"].shape == batch["input_ids"].shape and found["i"].dtype == torch.int64
    assert found["lang"].dtype == torch.int32 and found["score"].dtype == torch.float64
    ids, rows = ds.metadata_values("i"), found["i"].reshape(-1).tolist()
    width, at = batch["input_ids"].shape[-1], 0
    for k, index in enumerate(picked):
        n = len(ds[index]["input_ids"])
        start = at if padding_free else k * width
        lengths = ds.plan.seg_len[ds.plan.sample_bounds[index] : ds.plan.sample_bounds[index + 1]]
        assert (
            rows[start : start + n] == np.repeat(ids[ds.documents_of(index)], lengths)[:n].tolist()
        )
        if not padding_free:  # padding holds the null of int columns
            assert set(rows[start + n : (k + 1) * width]) <= {-(2**63)}
        at += n
    with pytest.raises(gristmill.errors.GristmillError, match="needs a dataset's batches"):
        collate([ds[0], ds[1]])
    # Through the loader's own path (several steps collated at once) too.
    loader = dataloader(ds, batch_size=2, collate_fn=collate, num_workers=0)
    step = next(iter(loader))
    assert step["metadata"]["lang"].shape == step["input_ids"].shape
