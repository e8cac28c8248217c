"""Hub and preset streams over ranks and DataLoader workers: every record exactly once, as for
files, whether the Hub dataset has one data file or several (local Hub-layout folders only)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.plugin.components import PresetType
from gristmill.plugin.manager import get_manager

datasets = pytest.importorskip("datasets")
torch = pytest.importorskip("torch")
pq = pytest.importorskip("pyarrow.parquet")
import gristmill.torch  # noqa: E402
from tests.torch.test_distributed import _data, _identity, _launch, _step  # noqa: E402

ROWS = 24  # records per data file
LAYOUTS = {  # name: (format, data files)
    "txt-1": ("txt", 1),
    "txt-5": ("txt", 5),
    "jsonl-5": ("jsonl", 5),
    "parquet-1": ("parquet", 1),  # one file of several row groups
}


def _write(path, texts: list[str], fmt: str) -> None:
    if fmt == "txt":
        path.write_text("".join(t + "\n" for t in texts))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        import pyarrow as pa

        pq.write_table(pa.table({"text": texts}), path, row_group_size=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Per layout: the folder's spec and its records' texts in file order, all different."""
    made = {}
    for name, (fmt, files) in LAYOUTS.items():
        root = tmp_path_factory.mktemp(name)
        (root / "data").mkdir()
        texts = []
        for f in range(files):
            mine = [f"{name} file {f} row {r} " + "w" * (r % 7) for r in range(ROWS)]
            _write(root / "data" / f"train-{f:05d}-of-{files:05d}.{fmt}", mine, fmt)
            texts += mine
        made[name] = (f"hub:{root}", texts)
    return made


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _stream(spec: str) -> gristmill.Stream:
    return gristmill.stream(spec, packer="none")  # one record per sample


def _texts(stream, samples) -> list[str]:
    eos = "<|endoftext|>"
    return [stream.tokenizer.decode(s["input_ids"]).removesuffix(eos) for s in samples]


def _served_by_ranks(stream, world: int, workers: int) -> list[str]:
    served = []
    for rank in range(world):
        dataset = gristmill.torch.StreamDataset(stream, rank=rank, world_size=world, shuffle=True)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, collate_fn=lambda s: s
        )
        served += _texts(stream, loader)
    return served


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_hub_record_once_across_ranks_and_workers(folders, layout):
    spec, texts = folders[layout]
    stream = _stream(spec)
    assert _texts(stream, stream) == texts  # one pass in this process: every record, in order
    for world in (1, 2, 3):
        for workers in (0, 1, 2, 3):
            served = _served_by_ranks(stream, world, workers)
            assert Counter(served) == Counter(texts), (world, workers)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_hub_stream_loader_serves_the_pass_in_order_whatever_the_workers(folders, layout):
    spec, texts = folders[layout]
    stream = _stream(spec)
    for workers in (0, 1, 2, 3):
        loader = gristmill.torch.dataloader(
            stream,
            batch_size=4,
            shuffle=False,
            num_workers=workers,
            collate_fn=lambda s: _texts(stream, s),
        )
        assert [t for batch in loader for t in batch] == texts, workers


def test_a_hub_stream_resumes_where_it_stopped(folders):
    spec, texts = folders["txt-5"]
    stream = _stream(spec)

    def loader(workers: int):
        return gristmill.torch.dataloader(
            stream,
            batch_size=4,
            seed=3,
            num_workers=workers,
            collate_fn=lambda s: _texts(stream, s),
        )

    whole = list(loader(2))
    assert Counter(t for batch in whole for t in batch) == Counter(texts)
    first = loader(2)
    head = list(islice(iter(first), 7))
    state = json.loads(json.dumps(first.state_dict()))
    second = loader(3)
    second.load_state_dict(state)
    assert head + list(second) == whole


class _LocalPresets:
    """Presets naming local Hub-layout folders, streamed and downloaded."""

    def __init__(self, folders):
        self.folders = folders

    @hookimpl
    def gristmill_presets(self) -> list[PresetType]:
        return [
            PresetType(
                name="local-streamed",
                description="five text files, streamed",
                source=self.folders["txt-5"][0],
            ),
            PresetType(
                name="local-downloaded",
                description="one Parquet file, downloaded",
                source=self.folders["parquet-1"][0],
                streaming=False,
            ),
        ]


@pytest.fixture
def presets(folders, tmp_path, monkeypatch):
    # A downloaded dataset is cached: here, not in the user's cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    manager = get_manager()
    manager.register(_LocalPresets(folders), "test-local-presets")
    yield {"preset:local-streamed": "txt-5", "preset:local-downloaded": "parquet-1"}
    manager.unregister("test-local-presets")


def test_presets_are_dealt_as_hub_streams(folders, presets):
    for spec, layout in presets.items():
        texts = folders[layout][1]
        stream = _stream(spec)
        for world, workers in ((1, 3), (2, 2), (3, 1)):
            served = _served_by_ranks(stream, world, workers)
            assert Counter(served) == Counter(texts), (spec, world, workers)


def test_real_ranks_serve_a_hub_stream_once_in_equal_steps(folders, tmp_path):
    spec, _ = folders["txt-5"]
    served = _launch(2, spec, tmp_path / "run")  # 2 ranks on gloo, 2 DataLoader workers each
    assert all(len({len(share) for share in step}) == 1 for step in served)  # equal steps
    items = [item for step in served for item in _step(step)]
    everything = sorted(_identity(list(_data(spec))))
    assert sorted(i for i in items if not i[1]) == everything
