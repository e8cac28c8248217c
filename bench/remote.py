"""Reading a dataset from an S3 server: gristmill's mirror against MosaicML streaming and litdata
reading the same tokens from the same server, and a simulation of many nodes from the schedule.

    /work/benchvenv/bin/python bench/remote.py [--corpus-dir /tmp/gristmill-bench]
        [--shards 100] [--startup-shards 10000] [--repeat 3] [--budget 40] [--only TABLES]
        [--systems ROWS] [--json results.json]

The server is moto's S3 server, started by this script on loopback in a thread of its own
process; it counts the bytes of every response it sends. The datasets are ``bench/loader.py``'s
(its 39 M tokens of Python sources, cached in CORPUS_DIR/loader): gristmill's prepared with
about --shards shards, the peers' windows of 2048 tokens written into as many (streaming's MDS,
litdata's ``optimize`` with ``TokensLoader``), all put into the server's bucket before the
timings. Every row runs in a fresh child (one process, no DataLoader workers) with an empty
cache folder of its own; batches of 8 × 2048 tokens; gristmill as shipped (the default sampler,
a new shuffle every epoch; prefetch of 4 shards; the loader's eviction by Belady's rule from its
schedule once there is a cache limit; the default collator), with the packers ``concat-chunk``
(the peers' windows), ``first-fit`` (whole documents mixed from across the split) and, with
``shard-blocks``, ``window`` (best fit among the next documents of the split). A row
named ``gristmill PACKER shard-blocks`` uses the ``shard-blocks`` sampler instead, with one
partition per node; ``... prefetch=0`` turns prefetching off. Children run one at a time, so the
bytes the server sent while one ran are that child's.

1. Epochs: the first epoch from a cold cache, then a second one (warm), samples/s and tokens/s
   (real tokens), and the bytes the server sent during each.
2. Bytes per rank: each rank of world sizes 1, 2 and 4 for one epoch from a cold cache, every
   rank its own node, run alone (the server's count); streaming sets up torch.distributed and
   waits for every rank, so its ranks run at once and each counts what its cache holds after
   the epoch. gristmill's against the bytes of the shards its samples touch (from the
   schedule) plus the files every open reads.
3. Three epochs with a cache of a quarter of the dataset: gristmill as shipped (the loader
   evicts by Belady's rule from its schedule) with either sampler, against what whole-shard
   caches fetch on the same reads (simulated: least recently used, and Belady's rule, the
   fewest), and streaming (``cache_limit``) and litdata (``max_cache_size``); the peak of the
   bytes held on disk, sampled every 8 batches, counting files the reader still maps after the
   mirror removed them. A row still running after --budget seconds stops, and its bytes are
   projected to 3 epochs.
4. Startup from a cold cache at --startup-shards shards: open → DataLoader → first batch.
5. Simulation, no processes: 64 and 1,024 ranks at 8 a node over 100,000 shards, the real
   ``Schedule`` and the real ``random``, ``sequential`` and ``shard-blocks`` (a partition per
   node) samplers over a synthetic plan; the reads of node 0 through an LRU cache and Belady's
   rule at ¼ and ⅒ of the dataset.

litdata downloads with obstore, whose client options litdata fixes without ``allow_http``: its
child allows plain HTTP (the loopback server's) before it reads, as it would read over HTTPS.

Setup: ``/work/benchvenv`` (``bench/prepare.py``'s venv) with ``s3fs`` and ``moto[server]``
installed under the repository's ``constraints.txt``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import loader  # bench/loader.py, beside this script
import numpy as np
from common import environment, versions

BUCKET = "gristmill-bench"
REGION = "us-west-2"
SECRET = "testing"  # moto takes any credentials
PACKAGES = ("gristmill", "torch", "mosaicml-streaming", "litdata", "s3fs", "moto", "boto3")
PACKERS = ("concat-chunk", "first-fit")
LOCAL = "shard-blocks"  # the sampler that keeps a node's reads within a few shards at a time
SYSTEMS = [
    *(f"gristmill {p}{extra}" for p in PACKERS for extra in ("", f" {LOCAL}")),
    f"gristmill window {LOCAL}",  # best fit among nearby documents: samples stay in few shards
    "gristmill concat-chunk prefetch=0",
    "streaming",
    "litdata",
]
CHECK_EVERY = 8  # batches between two looks at the bytes held on disk
SIM_SHARDS = 100_000
SIM_SAMPLES_PER_SHARD = 32.5  # samples of 2048 tokens a synthetic shard holds
SIM_PER_NODE = 8
SIM_BATCH = 8
SIM_EPOCHS = 3
MB = 1e6


# --- the server -------------------------------------------------------------------------------


class Server:
    """moto's S3 server on loopback, counting the body bytes of every response (with when it
    was sent); files are put straight into its store."""

    def __init__(self) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        app = DomainDispatcherApplication(create_backend_app)
        self.sent: list[tuple[float, str, int]] = []  # (time, method, body bytes)
        lock = threading.Lock()

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            body = app(environ, start_response)
            chunks = list(body)
            getattr(body, "close", lambda: None)()
            with lock:
                self.sent.append(
                    (time.time(), environ["REQUEST_METHOD"], sum(len(c) for c in chunks))
                )
            return chunks

        self.server = make_server(
            "127.0.0.1", 0, counted, threaded=True, request_handler=MotoRequestHandler
        )
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.store = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        self.store.create_bucket(BUCKET, REGION)

    def put(self, folder: Path) -> str:
        """Every file of ``folder`` (not gristmill's plan cache) under a fresh prefix: its URL."""
        prefix = f"{folder.name}-{uuid.uuid4().hex[:6]}"
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            if not relative.startswith(".gristmill-"):
                self.store.put_object(BUCKET, f"{prefix}/{relative}", path.read_bytes())
        return f"s3://{BUCKET}/{prefix}"

    def between(self, begin: float, end: float) -> tuple[int, int]:
        """GET requests answered and their body bytes, from ``begin`` to ``end``."""
        got = [n for t, method, n in list(self.sent) if begin <= t <= end and method == "GET"]
        return len(got), sum(got)

    def environment(self) -> dict[str, str]:
        """What the children's S3 clients read: the endpoint and dummy credentials."""
        return {
            "AWS_ACCESS_KEY_ID": SECRET,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,  # botocore and gristmill
            "S3_ENDPOINT_URL": self.endpoint,  # MosaicML streaming
            "AWS_EC2_METADATA_DISABLED": "true",
        }


# --- the children -----------------------------------------------------------------------------

CLOCK = [0]  # batches handed out so far in the child, over its epochs


def storage_options(endpoint: str) -> dict[str, Any]:
    return {
        "key": SECRET,
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION},
    }


def setup_gristmill(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Any]:
    import gristmill
    import gristmill.torch

    lap("import")
    ds = gristmill.open_dataset(
        spec["url"],
        seq_len=loader.SEQ_LEN,
        packer=spec["packer"],
        storage_options=storage_options(spec["endpoint"]),
        cache_limit=spec.get("limit"),
        **({"prefetch": spec["prefetch"]} if "prefetch" in spec else {}),
    )
    lap("open")
    dl = gristmill.torch.dataloader(
        ds,
        batch_size=loader.BATCH,
        rank=spec["rank"],
        world_size=spec["world"],
        **sampler_of(spec["sampler"], spec["world"]),
    )
    lap("loader")
    spec["held"] = ds.mirror.root
    return dl, lambda b: (len(b["input_ids"]), int(b["seq_lens"].sum()))


def setup_streaming(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Any]:
    import torch
    from peers import import_streaming  # bench/peers.py, beside this script

    base = import_streaming()
    if spec["world"] > 1:
        # Every rank here is a node of its own, all on this host: streaming names its shared
        # memory per host from the first free number, the same one for every node that
        # starts at once, so each rank takes its own range of numbers.
        import streaming.base.shared.prefix as shared

        find = shared._check_and_find_retrying
        shared._check_and_find_retrying = lambda *a, **k: find(*a, **k) + 1000 * spec["rank"]
    lap("import")
    local = Path(spec["cache"]) / "local"
    ds = base.StreamingDataset(
        remote=spec["url"],
        local=str(local),
        batch_size=loader.BATCH,
        shuffle=True,
        cache_limit=spec.get("limit"),
    )
    lap("open")
    dl = torch.utils.data.DataLoader(ds, batch_size=loader.BATCH, num_workers=0)
    lap("loader")
    spec["held"] = local
    return dl, lambda b: (len(b["tokens"]), b["tokens"].numel())


def setup_litdata(spec: dict[str, Any], lap: Callable[[str], None]) -> tuple[Any, Any]:
    import litdata.streaming.downloader as downloads
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    # litdata downloads chunks with obstore, whose client options litdata fixes without
    # allow_http: plain HTTP, as the loopback server speaks, is refused. Allowed here, so that
    # litdata reads as it would from an HTTPS endpoint.
    downloads._OBSTORE_CLIENT_OPTIONS = {**downloads._OBSTORE_CLIENT_OPTIONS, "allow_http": True}
    lap("import")
    cache = Path(spec["cache"]) / "litdata"
    ds = StreamingDataset(
        spec["url"],
        cache_dir=str(cache),
        item_loader=TokensLoader(block_size=loader.SEQ_LEN),
        shuffle=True,
        max_cache_size=spec.get("limit"),
        storage_options={
            "endpoint_url": spec["endpoint"],
            "aws_access_key_id": SECRET,
            "aws_secret_access_key": SECRET,
            "region_name": REGION,
        },
    )
    lap("open")
    dl = StreamingDataLoader(ds, batch_size=loader.BATCH, num_workers=0)
    lap("loader")
    spec["held"] = cache
    return dl, lambda b: (len(b), b.numel())


SETUPS = {"gristmill": setup_gristmill, "streaming": setup_streaming, "litdata": setup_litdata}


def held_bytes(root: Path) -> int:
    """Bytes of the files under ``root``, and of the files under it that were removed while
    this process still maps them (their blocks stay on disk until unmapped)."""
    total = 0
    for folder, folders, files in os.walk(root):
        folders[:] = [f for f in folders if not f.startswith(".gristmill-")]  # locks, plans
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    gone: dict[str, int] = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            name = fields[5] if len(fields) == 6 else ""
            if name.endswith("(deleted)\n") and name.startswith(str(root)):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                gone[fields[4]] = max(gone.get(fields[4], 0), hi - lo)
    return total + sum(gone.values())


def run_epochs(spec: dict[str, Any]) -> dict[str, Any]:
    """Open, the first batch, then ``epochs`` whole epochs (the first counted from the loader
    made, its first batch included), each with its wall-clock span for the server's counts."""
    laps, lap = loader.lap_timer()

    began = time.time()
    dl, count = SETUPS[spec["system"]](spec, lap)
    made, at = time.perf_counter(), time.time()
    batches = iter(dl)
    first = next(batches)
    lap("first")
    result: dict[str, Any] = {**laps, "startup": sum(v for k, v in laps.items() if k != "import")}
    peak, epochs, result["batches_planned"] = 0, [], len(dl)
    deadline = time.perf_counter() + spec.get("budget", float("inf"))
    for epoch in range(spec["epochs"]):
        if epoch:
            made, at, batches = time.perf_counter(), time.time(), iter(dl)
        samples = tokens = 0
        for batch in batches if epoch else itertools.chain([first], batches):
            got = count(batch)
            samples, tokens = samples + got[0], tokens + got[1]
            CLOCK[0] += 1
            if spec.get("watch") and CLOCK[0] % CHECK_EVERY == 0:
                peak = max(peak, held_bytes(Path(spec["held"])))
                if time.perf_counter() > deadline:
                    result["stopped"] = CLOCK[0]  # batches served when the budget ran out
                    break
        seconds = time.perf_counter() - made
        epochs.append({"began": at, "ended": time.time(), "seconds": seconds})
        epochs[-1] |= {"samples": samples, "tokens": tokens}
        if "stopped" in result:
            break
    result["held_end"] = held_bytes(Path(spec["held"]))  # what its cache holds at the end
    return {**result, "began": began, "epochs": epochs, "peak_held": peak}


def child(spec: dict[str, Any]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # peers.py, for streaming
    try:
        result = run_epochs(spec)
    except ImportError as exc:
        result = {"skipped": f"{exc.name or exc} not installed"}
    print("RESULT " + json.dumps(result, default=str), flush=True)
    os._exit(0)  # no waiting on the clients' threads at exit


# --- what each rank reads, from the schedule --------------------------------------------------


def sample_shards(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's shards (distinct, ascending) as offsets and a flat array (CSR)."""
    shards = ds.manifest["splits"][ds.split]["shards"]
    first = np.cumsum([0] + [s["num_documents"] for s in shards])
    plan = ds.plan
    shard = np.searchsorted(first, plan.seg_doc, "right") - 1
    sample = np.repeat(np.arange(len(plan)), np.diff(plan.sample_bounds))
    pairs = np.unique(sample.astype(np.int64) * len(shards) + shard)
    counts = np.bincount(pairs // len(shards), minlength=len(plan))
    return np.concatenate([[0], np.cumsum(counts)]), pairs % len(shards)


def expand(indices: np.ndarray, ptr: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items of rows ``indices`` of a CSR array, in order, and how many each row has."""
    lens = ptr[indices + 1] - ptr[indices]
    starts = np.repeat(ptr[indices] - (np.cumsum(lens) - lens), lens)
    return flat[starts + np.arange(int(lens.sum()))], lens


def rank_reads(ds: Any, orders: Iterable[np.ndarray], rank: int, world: int) -> np.ndarray:
    """(global step, shard) of every shard read by ``rank``, epoch after epoch, in order."""
    from gristmill.serve.schedule import Schedule

    ptr, flat = sample_shards(ds)
    steps, shards, offset = [], [], 0
    for order in orders:
        schedule = Schedule(order, world, loader.BATCH)
        indices, _, counts = schedule.shares(range(schedule.steps), rank)
        got, lens = expand(indices, ptr, flat)
        step = np.repeat(np.arange(len(counts)) + offset, counts)
        steps.append(np.repeat(step, lens))
        shards.append(got)
        offset += schedule.steps
    return np.stack([np.concatenate(steps), np.concatenate(shards)], axis=1)


# --- cache policies on a sequence of reads ----------------------------------------------------


def lru(items: np.ndarray, sizes: np.ndarray, capacity: float) -> tuple[float, float]:
    """Bytes fetched and the peak held by a cache of ``capacity`` bytes that drops the least
    recently used item (the item read now always lands)."""
    cache: OrderedDict[int, None] = OrderedDict()
    held = fetched = peak = 0.0
    sizes = sizes.tolist()
    for x in items.tolist():
        if x in cache:
            cache.move_to_end(x)
            continue
        fetched += sizes[x]
        while cache and held + sizes[x] > capacity:
            held -= sizes[cache.popitem(last=False)[0]]
        cache[x] = None
        held += sizes[x]
        peak = max(peak, held)
    return fetched, peak


def next_reads(items: np.ndarray) -> np.ndarray:
    """For every read, the position of the next read of the same item (len(items): never)."""
    order = np.argsort(items, kind="stable")
    following = np.full(len(items), len(items), np.int64)
    same = items[order[1:]] == items[order[:-1]]
    following[order[:-1][same]] = order[1:][same]
    return following


def belady(items: np.ndarray, sizes: np.ndarray, capacity: float) -> tuple[float, float]:
    """Bytes fetched and the peak held by a cache of ``capacity`` bytes that drops the item read
    again furthest in the future (the item read now always lands)."""
    nxt = next_reads(items).tolist()
    due: dict[int, int] = {}  # cached item -> its next read
    heap: list[tuple[int, int]] = []  # (-next read, item), stale entries skipped
    held = fetched = peak = 0.0
    sizes = sizes.tolist()
    for x, n in zip(items.tolist(), nxt):
        if x not in due:
            fetched += sizes[x]
            while due and held + sizes[x] > capacity:
                far, y = heapq.heappop(heap)
                if due.get(y) == -far:
                    del due[y]
                    held -= sizes[y]
            held += sizes[x]
            peak = max(peak, held)
        due[x] = n
        heapq.heappush(heap, (-n, x))
    return fetched, peak


# --- the runs ---------------------------------------------------------------------------------


class Bench:
    """The datasets on the server, and the children that read them."""

    def __init__(self, args: argparse.Namespace):
        corpus_dir = args.corpus_dir.resolve()
        self.lb = loader.Bench(
            argparse.Namespace(work=corpus_dir / "loader", corpus_dir=corpus_dir)
        )
        self.work = corpus_dir / "remote"
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.server = Server()
        self.systems = args.systems.split(",")
        self.logs, self.lock = 0, threading.Lock()

    def put(self, shards: int) -> dict[str, dict[str, Any]]:
        """Each system's data of about ``shards`` shards, on the server: its URL, its local
        copy, its bytes and shard count."""
        out = {}
        for name in ("gristmill", "streaming", "litdata"):
            local = self.lb.gristmill(shards) if name == "gristmill" else self.lb.peer(name, shards)
            folder = local / "data" if name == "litdata" else local
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            size -= sum(p.stat().st_size for p in folder.glob(".gristmill-*/**/*") if p.is_file())
            count = loader.shard_count(name, local)
            out[name] = {"url": self.server.put(folder), "local": local, "bytes": size}
            out[name]["shards"] = count
        return out

    def world(self, spec: dict[str, Any], world: int) -> list[dict[str, Any]]:
        """Every rank of ``world`` running ``spec``: one after another, or, for streaming
        (which sets up torch.distributed and waits for every rank), all at once."""
        if spec["system"] != "streaming":
            return [self.run(spec, rank, world) for rank in range(world)]
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        got: list[dict[str, Any]] = [{} for _ in range(world)]

        def one(rank: int) -> None:
            got[rank] = {**self.run(spec, rank, world, env), "together": True}

        threads = [threading.Thread(target=one, args=(rank,)) for rank in range(world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return got

    def run(
        self,
        spec: dict[str, Any],
        rank: int = 0,
        world: int = 1,
        extra: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``spec`` in a fresh child as rank ``rank`` of ``world`` (its own node), from an empty
        cache, with ``extra`` in its environment; the server's GET requests and bytes while it
        opened and in each epoch."""
        with self.lock:
            self.logs += 1
            number = self.logs
        cache = self.work / "cache" / f"{number:04d}"
        shutil.rmtree(cache, ignore_errors=True)
        spec = {**spec, "cache": str(cache), "endpoint": self.server.endpoint}
        spec |= {"rank": rank, "world": world}
        env = self.server.environment() | {"GRISTMILL_CACHE_DIR": str(cache / "gristmill")}
        env |= {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0"}
        env |= {"LOCAL_WORLD_SIZE": "1", "GLOBAL_RANK": str(rank), "NNODES": str(world)}
        env |= {"NODE_RANK": str(rank), **(extra or {})}
        log = self.work / "logs" / f"{number:04d}-{spec['system']}.log"
        got = loader.run_child(spec, log, script=__file__, env=env)
        shutil.rmtree(cache, ignore_errors=True)
        if "epochs" not in got:
            return got
        first = got["epochs"][0]["began"] if got["epochs"] else time.time()
        got["open_gets"], got["open_bytes"] = self.server.between(got["began"], first)
        for epoch in got["epochs"]:
            epoch["gets"], epoch["bytes"] = self.server.between(epoch["began"], epoch["ended"])
        return got


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec_of(system: str, data: dict[str, dict[str, Any]], epochs: int) -> dict[str, Any]:
    """A child's spec: ``gristmill PACKER [shard-blocks] [prefetch=N]``, ``streaming`` or
    ``litdata``."""
    kind, *words = system.split(" ")
    spec = {"system": kind, "url": data[kind]["url"], "epochs": epochs}
    if kind == "gristmill":
        spec |= {"packer": words[0], "sampler": LOCAL if LOCAL in words else "distributed"}
        spec |= {k: int(v) for k, _, v in (w.partition("=") for w in words if "=" in w)}
    return spec


def sampler_of(name: str, nodes: int) -> dict[str, Any]:
    """The loader's sampler arguments: ``shard-blocks`` with a partition per node."""
    return {"sampler": name} | ({"sampler_options": {"partitions": nodes}} if name == LOCAL else {})


def pinned_bytes(local: Path) -> int:
    """The manifest and the files every open of a gristmill dataset reads."""
    from gristmill.plugin.remote.mirror import listing, pinned

    data = (local / "manifest.json").read_bytes()
    files = listing(data)
    return len(data) + sum(files[name]["bytes"] for name in pinned(data))


def orders_of(ds: Any, sampler: str, world: int, epochs: int) -> list[np.ndarray]:
    """The loader's orders of ``epochs`` epochs on ``world`` ranks, each its own node."""
    chosen = sampler_of(sampler, world)
    made = ds.sampler(
        chosen["sampler"], global_batch=world * loader.BATCH, **chosen.get("sampler_options", {})
    )
    return [made.order(e) for e in range(epochs)]


def touched_bytes(local: Path, spec: dict[str, Any], world: int, epochs: int = 1) -> list[int]:
    """For every rank of ``world``: the bytes of the shards its samples read (the schedule of
    the row's sampler) and of the files every open reads."""
    import gristmill

    ds = gristmill.open_dataset(local, seq_len=loader.SEQ_LEN, packer=spec["packer"])
    orders = orders_of(ds, spec["sampler"], world, epochs)
    sizes = shard_sizes(ds)
    return [
        int(sizes[np.unique(rank_reads(ds, orders, rank, world)[:, 1])].sum()) + pinned_bytes(local)
        for rank in range(world)
    ]


def shard_sizes(ds: Any) -> np.ndarray:
    """Bytes of every shard's files."""
    shards = ds.manifest["splits"][ds.split]["shards"]
    return np.array(
        [
            sum(e["bytes"] for e in s.values() if isinstance(e, dict) and "bytes" in e)
            for s in shards
        ],
        np.float64,
    )


def epochs_table(bench: Bench, data: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table 1: two epochs of each system, the first from a cold cache."""
    rows = []
    for system in bench.systems:
        got = bench.run(spec_of(system, data, 2))
        rows.append({"system": system, "result": got})
        print(f"  {system}: {summary(got)}", flush=True)
    return rows


def summary(got: dict[str, Any]) -> str:
    if "epochs" not in got:
        return str(got.get("skipped") or got.get("failed") or got)
    return ", ".join(
        f"{e['tokens'] / e['seconds'] / 1e6:.1f} M tokens/s, {e['bytes'] / MB:.1f} MB"
        for e in got["epochs"]
    )


def ranks_table(
    bench: Bench, data: dict[str, dict[str, Any]], first: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Table 2: one epoch of every rank of world sizes 2 and 4 (1 from table 1)."""
    rows = []
    for system in bench.systems:
        if "prefetch=" in system:  # the same reads as the row with prefetching
            continue
        one = next(r["result"] for r in first if r["system"] == system)
        runs = {1: [one]}
        for world in (2, 4):
            runs[world] = bench.world(spec_of(system, data, 1), world)
        expected = {}
        if system.startswith("gristmill"):
            spec = spec_of(system, data, 1)
            expected = {w: touched_bytes(data["gristmill"]["local"], spec, w) for w in runs}
        rows.append({"system": system, "runs": runs, "touched": expected})
        print(
            f"  {system}: "
            + "; ".join(f"{w}: {[fetched(r) for r in rs]}" for w, rs in runs.items()),
            flush=True,
        )
    return rows


def fetched(got: dict[str, Any], epochs: int = 1) -> float | None:
    """MB the server sent a child: opening and its first ``epochs`` epochs."""
    if "epochs" not in got:
        return None
    if got.get("together"):  # ranks that ran at once: the bytes each one's cache holds
        return float(got["held_end"]) / MB
    return (got["open_bytes"] + sum(e["bytes"] for e in got["epochs"][:epochs])) / MB


def cache_table(
    bench: Bench, data: dict[str, dict[str, Any]], budget: float
) -> list[dict[str, Any]]:
    """Table 3: three epochs with a quarter of each dataset as the cache limit; a child that
    runs past ``budget`` seconds stops, and its bytes are projected to three epochs."""
    rows = []
    for system in bench.systems:
        if "prefetch=" in system:
            continue
        kind = system.split(" ")[0]
        limit = data[kind]["bytes"] // 4
        spec = spec_of(system, data, 3) | {"limit": limit, "watch": True, "budget": budget}
        row = {"system": system, "limit": limit, "result": bench.run(spec)}
        if kind == "gristmill":
            row["simulated"] = simulated_minimum(data["gristmill"]["local"], spec, limit)
        rows.append(row)
        got = row["result"]
        print(f"  {system}: {fetched(got, 3)} MB, {projected(got)}", flush=True)
    return rows


def projected(got: dict[str, Any]) -> float | None:
    """Bytes three epochs fetch: as counted, or, for a child stopped at its budget, the bytes
    a batch cost so far times the batches of three epochs."""
    if "epochs" not in got:
        return None
    total = got["open_bytes"] + sum(e["bytes"] for e in got["epochs"])
    if "stopped" not in got:
        return total
    return total / got["stopped"] * 3 * got["batches_planned"]


def simulated_minimum(local: Path, spec: dict[str, Any], limit: int) -> dict[str, float]:
    """Bytes three epochs of rank 0 (of 1) fetch through whole-shard caches of the room the
    limit leaves beside the files every open reads: LRU, and Belady's rule (the minimum)."""
    import gristmill

    ds = gristmill.open_dataset(local, seq_len=loader.SEQ_LEN, packer=spec["packer"])
    orders = orders_of(ds, spec["sampler"], 1, 3)
    items = rank_reads(ds, orders, 0, 1)[:, 1]
    sizes = shard_sizes(ds)
    room = limit - pinned_bytes(local)
    pinned = pinned_bytes(local)
    return {
        "lru": (lru(items, sizes, room)[0] + pinned) / MB,
        "belady": (belady(items, sizes, room)[0] + pinned) / MB,
        "reads": len(items),
    }


def startup_table(
    bench: Bench, data: dict[str, dict[str, Any]], repeat: int
) -> list[dict[str, Any]]:
    """Table 4: open → DataLoader → first batch from a cold cache, median of ``repeat``."""
    rows = []
    for system in bench.systems:
        if "prefetch=" in system:  # startup reads the first shards alike
            continue
        runs = [bench.run(spec_of(system, data, 0)) for _ in range(repeat)]
        done = sorted((r for r in runs if "startup" in r), key=lambda r: r["startup"])
        got = done[len(done) // 2] if done else runs[-1]
        rows.append({"system": system, "result": got, "runs": runs})
        print(f"  {system}: {got.get('startup', got)}", flush=True)
    return rows


# --- simulation: many nodes, from the schedule alone ------------------------------------------


def synthetic_plan(packer: str, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's shards (CSR) over SIM_SHARDS shards of equal size. ``window``: corpus
    order kept, a sample covers the next 2048 tokens (one shard, or two where it straddles a
    boundary), as ``window``, ``concat-chunk`` and the peers' windows do; ``first-fit``: a
    sample's ``segments`` documents come from anywhere in the split (shards drawn uniformly)."""
    span = int(SIM_SAMPLES_PER_SHARD * loader.SEQ_LEN)
    n = SIM_SHARDS * span // loader.SEQ_LEN
    if packer == "window":
        lo = np.arange(n) * loader.SEQ_LEN // span
        hi = (np.arange(1, n + 1) * loader.SEQ_LEN - 1) // span
        both = np.stack([np.ones(n, bool), hi > lo], axis=1)
        flat = np.stack([lo, hi], axis=1)[both]  # sample by sample: lo, then hi if another
        return np.concatenate([[0], np.cumsum(both.sum(axis=1))]), flat
    rng = np.random.default_rng(0)
    picks = np.sort(rng.integers(0, SIM_SHARDS, (n, segments)), axis=1)
    keep = np.ones_like(picks, bool)
    keep[:, 1:] = picks[:, 1:] != picks[:, :-1]
    return np.concatenate([[0], np.cumsum(keep.sum(axis=1))]), picks[keep]


def node_reads(
    plan: tuple[np.ndarray, np.ndarray], sampler: str, ranks: int, node: int
) -> np.ndarray:
    """The shards node ``node``'s ranks read over SIM_EPOCHS epochs, step by step (a shard
    once a step): the real sampler's order cut by the real ``Schedule``."""
    from gristmill.plugin.components import SamplerType
    from gristmill.plugin.manager import get_manager
    from gristmill.serve.schedule import Schedule

    ptr, flat = plan
    n = len(ptr) - 1
    record = get_manager().get(SamplerType, sampler)
    options = {"partitions": ranks // SIM_PER_NODE} if sampler == LOCAL else {}
    order_of = record.factory(
        n,
        seed=0,
        lengths=np.full(n, loader.SEQ_LEN),
        global_batch=ranks * SIM_BATCH,
        shards=flat[ptr[:-1]].astype(np.int64),
        **options,
    )
    keys, offset = [], 0
    for epoch in range(SIM_EPOCHS):
        schedule = Schedule(order_of.order(epoch), ranks, SIM_BATCH)
        for rank in range(node * SIM_PER_NODE, (node + 1) * SIM_PER_NODE):
            indices, _, counts = schedule.shares(range(schedule.steps), rank)
            shards, lens = expand(indices, ptr, flat)
            steps = np.repeat(np.repeat(np.arange(len(counts)) + offset, counts), lens)
            keys.append(steps * SIM_SHARDS + shards)
        offset += schedule.steps
    return np.unique(np.concatenate(keys)) % SIM_SHARDS  # by step, a shard once a step


def simulate(segments: int) -> list[dict[str, Any]]:
    """Table 5: node 0's fetches, in shards, per (ranks, sampler, packer) and cache size."""
    rows = []
    for packer in ("window", "first-fit"):
        plan = synthetic_plan(packer, segments)
        for ranks in (64, 1024):
            # The first-fit model draws every sample's shards alike: the order does not matter.
            for sampler in ("random", "sequential", LOCAL) if packer == "window" else ("random",):
                began = time.perf_counter()
                items = node_reads(plan, sampler, ranks, 0)
                sizes = np.ones(SIM_SHARDS)
                row = {"packer": packer, "ranks": ranks, "sampler": sampler, "reads": len(items)}
                row["distinct"] = len(np.unique(items))
                for name, fraction in (("1/4", 4), ("1/10", 10)):
                    room = SIM_SHARDS / fraction
                    row[f"lru {name}"], row[f"peak {name}"] = lru(items, sizes, room)
                    row[f"belady {name}"] = belady(items, sizes, room)[0]
                row["seconds"] = time.perf_counter() - began
                rows.append(row)
                print(f"  {packer}, {ranks} ranks, {sampler}: {row}", flush=True)
    return rows


# --- tables -----------------------------------------------------------------------------------


def why(got: dict[str, Any]) -> str:
    return str(got.get("skipped") or got.get("failed") or got)[:160]


def print_epochs(rows: list[dict[str, Any]], data: dict[str, dict[str, Any]]) -> None:
    print("\n### 1. Two epochs from the server, the first from a cold cache (rank 0 of 1)\n")
    print("| system | startup s | epoch | seconds | samples/s | M tokens/s | GETs | MB fetched |")
    print("|---|--:|---|--:|--:|--:|--:|--:|")
    for r in rows:
        got = r["result"]
        if "epochs" not in got:
            print(f"| {r['system']} | {why(got)} | | | | | | |")
            continue
        for k, e in enumerate(got["epochs"]):
            gets, size = e["gets"], e["bytes"]
            if k == 0:
                gets, size = gets + got["open_gets"], size + got["open_bytes"]
            head = f"| {r['system']} | {got['startup']:.2f}" if k == 0 else "| | "
            print(
                f"{head} | {('1 (cold)', '2 (warm)')[min(k, 1)]} | {e['seconds']:.1f} | "
                f"{e['samples'] / e['seconds']:,.0f} | {e['tokens'] / e['seconds'] / 1e6:.2f} | "
                f"{gets:,} | {size / MB:.1f} |"
            )
    sizes = ", ".join(
        f"{k} {v['bytes'] / MB:.1f} MB in {v['shards']:,} shards" for k, v in data.items()
    )
    print(f"\nThe datasets: {sizes}.")


def print_ranks(rows: list[dict[str, Any]]) -> None:
    print(
        "\n### 2. MB fetched by each rank in one epoch from a cold cache (each rank its own node)\n"
    )
    print(
        "| system | world 1 | world 2, per rank | world 4, per rank | gristmill: its samples' shards + open |"
    )
    print("|---|--:|--:|--:|---|")
    for r in rows:
        cells = []
        for world in (1, 2, 4):
            got = [fetched(x) for x in r["runs"][world]]
            cells.append(" / ".join("–" if g is None else f"{g:.1f}" for g in got))
        touched = "; ".join(
            f"{w}: " + " / ".join(f"{b / MB:.1f}" for b in bs) for w, bs in r["touched"].items()
        )
        print(f"| {r['system']} | " + " | ".join(cells) + f" | {touched or '–'} |")


def print_cache(rows: list[dict[str, Any]], data: dict[str, dict[str, Any]]) -> None:
    print("\n### 3. Three epochs, the cache limit a quarter of the dataset (rank 0 of 1)\n")
    print(
        "| system | eviction | limit MB | MB fetched, epoch 1 / 2 / 3 | 3 epochs MB | × dataset "
        "| peak on disk MB | whole-shard cache, simulated: LRU / Belady, × dataset |"
    )
    print("|---|---|--:|---|--:|--:|--:|---|")
    for r in rows:
        got, kind = r["result"], r["system"].split(" ")[0]
        policy = {
            "gristmill": "Belady from the loader's schedule",
            "streaming": "`cache_limit` (LRU)",
        }.get(kind, "`max_cache_size`")
        if "epochs" not in got:
            print(f"| {r['system']} | {policy} | {why(got)} | | | | | |")
            continue
        per = [e["bytes"] for e in got["epochs"]]
        per[0] += got["open_bytes"]
        total, size = projected(got), data[kind]["bytes"]
        shown = " / ".join(f"{b / MB:.1f}" for b in per)
        if "stopped" in got:
            shown += (
                f" (stopped after {got['stopped']:,} of {3 * got['batches_planned']:,} batches)"
            )
        sim = r.get("simulated")
        simulated = f"{sim['lru'] / size * MB:.0f} / {sim['belady'] / size * MB:.0f}" if sim else ""
        mark = "~" if "stopped" in got else ""
        print(
            f"| {r['system']} | {policy} | {r['limit'] / MB:.1f} | {shown} | {mark}{total / MB:,.0f} "
            f"| {mark}{total / size:.1f} | {got['peak_held'] / MB:.1f} | {simulated} |"
        )
    print(
        "- ~ projected: the bytes per batch until the budget ran out, times the batches of 3 epochs"
    )


def print_startup(rows: list[dict[str, Any]], data: dict[str, dict[str, Any]], repeat: int) -> None:
    print(
        f"\n### 4. Startup from a cold cache: open → DataLoader → first batch, median of {repeat}\n"
    )
    print(
        "| system | shards | open s | DataLoader s | first batch s | total s | GETs | MB fetched |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        got, kind = r["result"], r["system"].split(" ")[0]
        if "startup" not in got:
            print(f"| {r['system']} | {why(got)} | | | | | | |")
            continue
        print(
            f"| {r['system']} | {data[kind]['shards']:,} | {got['open']:.2f} | {got['loader']:.2f} | "
            f"{got['first']:.2f} | **{got['startup']:.2f}** | {got['open_gets']:,} | "
            f"{got['open_bytes'] / MB:.1f} |"
        )


def print_simulation(rows: list[dict[str, Any]], segments: int) -> None:
    print(
        f"\n### 5. Simulated: node 0 of 8 ranks over {SIM_EPOCHS} epochs, {SIM_SHARDS:,} shards of "
        f"{SIM_SAMPLES_PER_SHARD:g} samples; shards fetched, in datasets (× {SIM_SHARDS:,} shards)\n"
    )
    print(
        "| packer | ranks | sampler | reads | distinct shards (no limit) | ¼: LRU | ¼: Belady | ⅒: LRU | ⅒: Belady | peak ¼ / ⅒ | s |"
    )
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|---|--:|")
    for r in rows:
        x = [
            r[k] / SIM_SHARDS
            for k in ("distinct", "lru 1/4", "belady 1/4", "lru 1/10", "belady 1/10")
        ]
        print(
            f"| {r['packer']} | {r['ranks']:,} | {r['sampler']} | {r['reads']:,} | "
            + " | ".join(f"{v:.2f}" for v in x)
            + f" | {r['peak 1/4'] / SIM_SHARDS:.2f} / {r['peak 1/10'] / SIM_SHARDS:.2f} | {r['seconds']:.0f} |"
        )
    print(
        f"- first-fit: {segments} shards drawn per sample (the real first-fit plan's mean segments a sample, rounded)"
    )


def first_fit_segments(local: Path) -> int:
    """Mean segments a sample of the real first-fit plan of ``local``, rounded."""
    import gristmill

    ds = gristmill.open_dataset(local, seq_len=loader.SEQ_LEN, packer="first-fit")
    return max(1, round(len(ds.plan.seg_doc) / len(ds.plan)))


TABLES = ("epochs", "ranks", "cache", "startup", "simulation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=Path("/tmp/gristmill-bench"))
    parser.add_argument("--shards", type=int, default=100, help="shards of tables 1-3 (about)")
    parser.add_argument("--startup-shards", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="children per startup row")
    parser.add_argument(
        "--budget",
        type=float,
        default=40.0,
        help="seconds a row of table 3 runs at most; a row stopped there is projected (40)",
    )
    parser.add_argument("--only", default=",".join(TABLES), help="comma-separated tables")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated rows")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(TABLES):
        parser.error(f"--only: unknown table(s) {', '.join(sorted(unknown))}")
    if unknown := set(args.systems.split(",")) - set(SYSTEMS):
        parser.error(
            f"--systems: unknown {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}"
        )
    started, load = time.perf_counter(), os.getloadavg()[0]
    bench = Bench(args)
    saved: dict[str, Any] = {}
    data = bench.put(args.shards) if only & {"epochs", "ranks", "cache"} else {}
    if only & {"epochs", "ranks"}:
        print("epochs ...", flush=True)
        saved["epochs"] = epochs_table(bench, data)
    if "ranks" in only:
        print("ranks ...", flush=True)
        saved["ranks"] = ranks_table(bench, data, saved["epochs"])
    if "cache" in only:
        print("cache ...", flush=True)
        saved["cache"] = cache_table(bench, data, args.budget)
    if "startup" in only:
        print("startup ...", flush=True)
        big = bench.put(args.startup_shards)
        saved["startup"] = startup_table(bench, big, args.repeat)
    if "simulation" in only:
        print("simulation ...", flush=True)
        segments = first_fit_segments(bench.lb.gristmill(args.shards))
        saved["simulation"] = simulate(segments)
    if "epochs" in saved:
        print_epochs(saved["epochs"], data)
    if "ranks" in saved:
        print_ranks(saved["ranks"])
    if "cache" in saved:
        print_cache(saved["cache"], data)
    if "startup" in saved:
        print_startup(saved["startup"], big, args.repeat)
    if "simulation" in saved:
        print_simulation(saved["simulation"], segments)
    print("\n" + environment(load, PACKAGES))
    elapsed = time.perf_counter() - started
    print(f"whole run: {elapsed / 60:.1f} min")
    if args.json:
        saved |= {"versions": versions(PACKAGES), "seconds": elapsed}
        args.json.write_text(json.dumps(saved, indent=1, default=str))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
