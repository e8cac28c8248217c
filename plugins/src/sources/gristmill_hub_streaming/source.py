"""The Hub source: one ``datasets`` dataset, or a contiguous shard of it."""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gristmill.errors import DataError, MissingDependencyError
from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import PassedOver, Where
from gristmill.plugin.files import content_hash, without_compression

URL_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
ROWS_PER_BATCH = 256  # rows taken from the library at once: its per-row overhead, amortised
PROBE_TIMEOUT = 5.0  # seconds: a clear "offline" beats the library's minute of retries


class HubSource:
    def __init__(self, spec: str, *, streaming: bool = True, **options: Any):
        self.spec = spec
        self.shard = (0, 1)  # (index, count): which of the pieces `split` made this is
        self.streaming = streaming  # False: download once and read from the local cache
        body = spec.removeprefix("hub:")
        body, _, self.split_name = body.partition("#")
        self.split_name = self.split_name or "train"
        self.kind = "url" if body.startswith(("http://", "https://")) else "hub"
        if self.kind == "hub" and (body.startswith((".", "/", "~")) or os.path.isdir(body)):
            self.kind = "local"
        self.revision = None
        if self.kind == "hub":
            body, _, revision = body.partition("@")
            self.revision = revision or None
        name, _, config = body.partition(":") if self.kind == "hub" else (body, "", "")
        self.name, self.config = name, config or None
        if self.kind == "local":
            _check_folder(spec, os.path.expanduser(name))
        # Opening resolves the dataset's metadata (no data yet), so that a missing dataset or no
        # network fails here, before prepare touches its output directory.
        self.dataset = self._dataset()

    def _dataset(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise MissingDependencyError(
                f"{self.spec}: reading Hugging Face datasets needs the datasets package: "
                "pip install 'gristmill[hub]'"
            ) from None
        if self.kind == "hub" and not datasets.config.HF_HUB_OFFLINE:
            _probe_endpoint(self.spec, datasets.config.HF_ENDPOINT)
        try:
            if self.kind == "url":
                # datasets decompresses .gz/.zst data files itself; the builder goes by the
                # format underneath.
                path = without_compression(urlparse(self.name).path)
                builder = URL_BUILDERS.get(Path(path).suffix.lower())
                if builder is None:
                    raise DataError(
                        f"cannot tell the format of {self.name}: serve a file ending in "
                        f"{', '.join(URL_BUILDERS)}",
                        where=self.spec,
                    )
                dataset = datasets.load_dataset(
                    builder, data_files=self.name, split="train", streaming=True
                )
            else:
                dataset = datasets.load_dataset(
                    os.path.expanduser(self.name),
                    self.config,
                    split=self.split_name,
                    revision=self.revision,
                    streaming=self.streaming,
                )
        except DataError:
            raise
        except Exception as exc:
            raise DataError(_explain(self, exc), where=self.spec) from None
        return dataset

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | PassedOver]:
        origin = (
            self.spec
            if self.shard[1] == 1
            else f"{self.spec} [shard {self.shard[0]}/{self.shard[1]}]"
        )
        # Plain text read line by line (datasets' text builder): a blank line separates, as in
        # a JSON Lines file; counted, and the rows keep the file's line numbers.
        lines = getattr(self.dataset.info, "builder_name", None) == "text"
        row = 0
        try:
            for row, record in enumerate(_rows(self.dataset), 1):
                where = Where(origin, row, unit="row")
                if lines and not str(record.get("text", "")).strip():
                    yield PassedOver("blank-line", where)
                else:
                    yield record, where
        except Exception as exc:  # the library failed mid-stream (network, a damaged file…)
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"reading stopped after row {row}: {type(exc).__name__}: {text}", where=origin
            ) from None

    def split(self, pieces: int) -> list[HubSource]:
        """Contiguous runs of the dataset's units, in order: a streamed dataset's data files
        (Parquet's row groups when there are fewer files than ``pieces``), a downloaded
        dataset's rows. Each piece reads its own units and nothing else, whichever process
        (a prepare worker, a rank, a DataLoader worker) reads it."""
        if self.shard != (0, 1):
            return [self]
        dataset = _finest(self.dataset, pieces)
        count = max(1, min(pieces, _units(dataset)))
        return [self._piece(dataset, i, count) for i in range(count)]

    def _piece(self, dataset: Any, index: int, count: int) -> HubSource:
        piece = copy.copy(self)
        piece.shard = (index, count)
        piece.dataset = dataset.shard(num_shards=count, index=index, contiguous=True)
        return piece

    def named_splits(self) -> dict[str, HubSource]:
        """Every split of the dataset, each as a source (``HasSplits``), in the dataset's
        order; only the named one when the spec names one (``#test``) or is a URL (one file, the
        ``train`` split)."""
        if "#" in self.spec or self.kind == "url":
            return {self.split_name: self}
        import datasets

        try:
            names = datasets.get_dataset_split_names(
                os.path.expanduser(self.name), self.config, revision=self.revision
            )
        except Exception as exc:
            raise DataError(_explain(self, exc), where=self.spec) from None
        return {
            name: self
            if name == self.split_name
            else HubSource(f"{self.spec}#{name}", streaming=self.streaming)
            for name in names
        }

    def fingerprint(self) -> str:
        if self.kind == "local":
            files = sorted(p for p in Path(os.path.expanduser(self.name)).rglob("*") if p.is_file())
            return fingerprint([self.spec, [(str(p), content_hash(str(p))) for p in files]])
        # A Hub dataset without a pinned @revision can change under the same spec: pin one to make
        # "already prepared" mean the same data.
        return fingerprint([self.spec, self.revision])


def _units(dataset: Any) -> int:
    """What a dataset splits by: a streamed one's shards (data files, or row groups once
    resharded), a downloaded one's rows."""
    return dataset.n_shards if _is_streamed(dataset) else len(dataset)


def _finest(dataset: Any, pieces: int) -> Any:
    """A streamed dataset with fewer files than ``pieces`` split further where the library can
    without reading any row (Parquet: per row group, from the footers), so that one big file
    still spreads over ranks and workers; other formats stay one shard per file."""
    if not _is_streamed(dataset) or dataset.n_shards >= pieces:
        return dataset
    reshard = getattr(dataset, "reshard", None)  # newer versions of datasets only
    return dataset if reshard is None else reshard()


def _is_streamed(dataset: Any) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def _rows(dataset: Any) -> Iterator[dict[str, Any]]:
    """Every row of ``dataset``, whichever process iterates it.

    Iterated directly inside a DataLoader worker, a streamed dataset keeps only that worker's
    share of its shards (and none at all for workers beyond its shard count), on top of the
    piece gristmill dealt to the worker: records would be lost. ``iter`` reads them all.
    """
    if not _is_streamed(dataset):
        yield from dataset  # a downloaded dataset ignores DataLoader workers
        return
    for batch in dataset.iter(batch_size=ROWS_PER_BATCH):
        columns = list(batch)
        for values in zip(*batch.values()):
            yield dict(zip(columns, values))


def _probe_endpoint(spec: str, endpoint: str) -> None:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        raise DataError(_offline(f"cannot reach {endpoint} ({exc})"), where=spec) from None


def _offline(detail: str) -> str:
    import datasets

    local = (
        "point at local files: `gristmill prepare data/*.parquet` or hub:/path/to/dataset-folder"
    )
    if datasets.config.HF_HUB_OFFLINE:
        return (
            f"{detail}; HF_HUB_OFFLINE is set and this dataset is not in the local Hugging Face "
            f"cache: run once with network to cache it, or {local}"
        )
    return f"{detail}; gristmill looks offline. Use a cached copy with HF_HUB_OFFLINE=1, or {local}"


def _check_folder(spec: str, folder: str) -> None:
    """A local dataset folder that is not there fails naming it, before ``datasets`` reads the
    name as a Hub id."""
    if os.path.isdir(folder):
        return
    if os.path.exists(folder):
        raise DataError(
            f"{folder} is a file: hub: reads a dataset folder; name a file without hub: "
            f"(`gristmill prepare {folder}`)",
            where=spec,
        )
    raise DataError(
        f"no such folder: {folder} (hub:./DIR and hub:/DIR read a local folder)", where=spec
    )


def _explain(source: HubSource, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if source.kind == "hub" and isinstance(exc, (ConnectionError, OSError)):
        return _offline(f"cannot load {source.name} from the Hub ({text})")
    return f"cannot load the dataset: {type(exc).__name__}: {text}"
