"""The Hub source: one ``datasets`` IterableDataset, or a shard of it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gristmill.components import Where
from gristmill.errors import DataError, MissingDependencyError
from gristmill.files import content_hash, without_compression
from gristmill.manifest import fingerprint

URL_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
PROBE_TIMEOUT = 5.0  # seconds: a clear "offline" beats the library's minute of retries


class HubSource:
    def __init__(
        self, spec: str, *, shard: tuple[int, int] = (0, 1), streaming: bool = True, **options: Any
    ):
        self.spec = spec
        self.shard = shard
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
        index, count = self.shard
        if count == 1:
            return dataset
        if self.streaming:
            return dataset.shard(num_shards=count, index=index)
        return dataset.shard(num_shards=count, index=index, contiguous=True)

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        origin = (
            self.spec
            if self.shard[1] == 1
            else f"{self.spec} [shard {self.shard[0]}/{self.shard[1]}]"
        )
        row = 0
        try:
            for row, record in enumerate(self.dataset, 1):
                yield record, Where(origin, row, unit="row")
        except Exception as exc:  # the library failed mid-stream (network, a damaged file…)
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"reading stopped after row {row}: {type(exc).__name__}: {text}", where=origin
            ) from None

    def split(self, pieces: int) -> list[HubSource]:
        if self.shard != (0, 1):
            return [self]
        dataset = self.dataset
        # Streaming data shards by file; a downloaded dataset by contiguous rows.
        count = max(1, min(pieces, getattr(dataset, "n_shards", None) or len(dataset)))
        return [
            HubSource(self.spec, shard=(i, count), streaming=self.streaming) for i in range(count)
        ]

    def fingerprint(self) -> str:
        if self.kind == "local":
            files = sorted(p for p in Path(os.path.expanduser(self.name)).rglob("*") if p.is_file())
            return fingerprint([self.spec, [(str(p), content_hash(str(p))) for p in files]])
        # A Hub dataset without a pinned @revision can change under the same spec: pin one to make
        # "already prepared" mean the same data.
        return fingerprint([self.spec, self.revision])


def _probe_endpoint(spec: str, endpoint: str) -> None:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        raise DataError(_offline(f"cannot reach {endpoint} ({exc})"), where=spec) from None


def _offline(detail: str) -> str:
    return (
        f"{detail}; gristmill looks offline. Use a cached copy with HF_HUB_OFFLINE=1, or point "
        "at local files: `gristmill prepare data/*.parquet` or hub:/path/to/dataset-folder"
    )


def _explain(source: HubSource, exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if source.kind == "hub" and isinstance(exc, (ConnectionError, OSError)):
        return _offline(f"cannot load {source.name} from the Hub ({text})")
    return f"cannot load the dataset: {type(exc).__name__}: {text}"
