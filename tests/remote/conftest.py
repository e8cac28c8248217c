"""Servers for the remote datasets' tests, started on loopback: moto's S3 server (s3fs is the
client) and an HTTP server over a folder. Both count the requests they answer, and the HTTP
server injects faults by path: a 403, or a connection dropped mid-body."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gristmill.plugin.remote import mirror

MISSING = [name for name in ("fsspec", "aiohttp") if importlib.util.find_spec(name) is None]
S3_MISSING = [name for name in ("s3fs", "moto") if importlib.util.find_spec(name) is None]
REGION = "us-west-2"
BUCKET = "gristmill-tests"

if MISSING:
    pytest.skip(
        f"remote datasets need {', '.join(MISSING)}: pip install 'gristmill[remote]' "
        "(tox -e remote installs it)",
        allow_module_level=True,
    )


def records(n: int = 400) -> list[dict[str, Any]]:
    """Prompt/completion records (loss masks) with metadata, of varied lengths."""
    return [
        {
            "prompt": f"question {i}: " + "why " * (i % 13),
            "completion": f"answer {i} " + "because " * (i % 29 + 1),
            "metadata": {"lang": ("en", "fr", "de")[i % 3], "i": i},
        }
        for i in range(n)
    ]


@pytest.fixture
def dataset(prepared_dataset) -> Path:
    """A local dataset of several shards, with loss masks, metadata and an offsets index."""
    return prepared_dataset(records(), tokens_per_shard=4000)


@pytest.fixture
def plain(prepared_dataset) -> Path:
    """A dataset of several shards without loss masks: opening it reads no shard file."""
    return prepared_dataset(
        [{"text": f"doc {i} " * (i % 23 + 1)} for i in range(500)], tokens_per_shard=3000
    )


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with an empty cache (mirrors included), and retries without waits."""
    monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(mirror.CACHE_LIMIT_VARIABLE, raising=False)
    monkeypatch.setattr(mirror, "RETRY_DELAYS", (0.01, 0.01, 0.01))


class Requests:
    """What a server was asked, as (method, path) pairs, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add(self, method: str, path: str) -> None:
        with self.lock:
            self.seen.append((method, path))

    def count(self, method: str, ending: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.seen if m == method and p.split("?")[0].endswith(ending))

    def by_path(self, method: str) -> Counter[str]:
        with self.lock:
            return Counter(p.split("?")[0] for m, p in self.seen if m == method)

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()


class Served:
    """An HTTP server over ``root``: ``url`` its address, ``requests`` what it answered,
    ``faults`` path → ``"403"`` or ``"drop"`` (the body cut off halfway, once)."""

    def __init__(self, root: Path):
        self.root = root
        self.requests = Requests()
        self.faults: dict[str, str] = {}
        handler = functools.partial(_Handler, directory=str(root), served=self)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, dataset: Path) -> str:
        """A copy of ``dataset`` served under a fresh name: its URL."""
        name = uuid.uuid4().hex[:12]
        shutil.copytree(dataset, self.root / name, ignore=shutil.ignore_patterns(".gristmill-*"))
        return f"{self.url}/{name}"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, served: Served, **kwargs: Any):
        self.served = served
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.served.requests.add("HEAD", self.path)
        if self.served.faults.get(self.path) == "403":
            self.send_error(403)
            return
        super().do_HEAD()

    def do_GET(self) -> None:
        self.served.requests.add("GET", self.path)
        fault = self.served.faults.get(self.path)
        if fault == "403":
            self.send_error(403)
        elif fault == "drop":
            del self.served.faults[self.path]
            self._drop()
        else:
            super().do_GET()

    def _drop(self) -> None:
        """Promise the whole file, send half of it, and close the connection."""
        data = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("served"))
    yield served
    served.server.shutdown()
    served.server.server_close()


class S3:
    """moto's S3 server on loopback, its requests counted: ``options`` are the storage options
    that reach it with dummy credentials."""

    def __init__(self) -> None:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.requests = Requests()
        app = DomainDispatcherApplication(create_backend_app)

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            path = environ.get("PATH_INFO", "")
            query = environ.get("QUERY_STRING", "")
            self.requests.add(environ["REQUEST_METHOD"], f"{path}?{query}" if query else path)
            return app(environ, start_response)

        self.server = make_server(
            "127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": REGION},
        }
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.fs = self.filesystem()
        self.fs.mkdir(BUCKET)

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)

    def upload(self, dataset: Path) -> str:
        """``dataset`` uploaded under a fresh prefix, the manifest last: its URL."""
        prefix = f"{BUCKET}/{uuid.uuid4().hex[:12]}"
        files = sorted(
            p
            for p in dataset.rglob("*")
            if p.is_file() and not p.relative_to(dataset).parts[0].startswith(".gristmill-")
        )
        for path in sorted(files, key=lambda p: p.name == "manifest.json"):
            self.fs.pipe(f"{prefix}/{path.relative_to(dataset).as_posix()}", path.read_bytes())
        return f"s3://{prefix}"


@pytest.fixture(scope="session")
def s3_libraries() -> None:
    """Skips, saying why, where s3fs or moto is not installed."""
    if S3_MISSING:
        pytest.skip(
            f"the S3 tests need {', '.join(S3_MISSING)}: pip install 'gristmill[s3]' "
            "'moto[server]' (tox -e remote installs them)"
        )


@pytest.fixture(scope="session")
def s3_server(s3_libraries: None) -> Iterator[S3]:
    server = S3()
    yield server
    server.server.shutdown()
