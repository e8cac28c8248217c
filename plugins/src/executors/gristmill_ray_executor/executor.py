"""Run prepare's tasks as Ray tasks: at most ``workers`` at a time, one CPU each.

Which Ray: the one this process already initialised (``ray.init`` by the caller), else the cluster
at ``address`` (or at ``RAY_ADDRESS``, as every Ray program does: ``ray job submit`` sets it), else
a Ray of ``workers`` CPUs started here, isolated from any other Ray on the machine. Only a
connection or an instance this executor made is shut down after the run; a cluster lives on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gristmill.errors import GristmillError, MissingDependencyError
from gristmill.plugin.workers import one_thread

log = logging.getLogger("gristmill")

PROBE_TIMEOUT_S = 10.0


class RayExecutor:
    """``RayExecutor(workers=N, address=None)``: see the module docstring.

    ``workers`` is how many tasks run at once (the CPUs of a Ray started here); ``address`` is a
    Ray cluster's address (``HOST:PORT``, ``ray://HOST:10001``, ``auto``). Other keywords, context
    a later gristmill may pass, are ignored; a user's unknown option never gets here.
    """

    def __init__(self, workers: int = 1, address: str | None = None, **options: Any):
        self.workers = max(1, int(workers))
        self.address = address or None

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        ray = _import_ray()
        if not tasks:
            return  # every task was done before (a resumed run): no Ray to start
        connected_here = self._connect(ray)
        try:
            yield from self._run(ray, fn, tasks)
        finally:
            if connected_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Make sure Ray is initialised; whether this call did it."""
        if ray.is_initialized():
            if self.address:
                log.warning(
                    f"ray: already initialised in this process; --ray-address {self.address} "
                    "is not used"
                )
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        # The driver's own Ray logs stay quiet (WARNING); errors in tasks still reach it.
        if address:
            log.info(f"ray: connecting to {address}")
            _probe(address)
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise GristmillError(f"ray: cannot connect to {address}: {exc}") from exc
            cpus = int(ray.cluster_resources().get("CPU", 0))
            if cpus > self.workers:
                log.info(
                    f"ray: running {self.workers} task(s) at a time on a cluster of {cpus} "
                    "CPUs; --workers N runs more"
                )
        else:
            # "local": a new instance even when `ray start` left one running on this machine.
            ray.init(
                address="local",
                num_cpus=self.workers,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        return True

    def _run(self, ray: Any, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        # One CPU per task; no retry on an exception (a task fails the same way twice), but Ray
        # still reruns a task whose worker died: tasks are idempotent (files appear by rename).
        remote = ray.remote(num_cpus=1)(_call)
        fn_ref = ray.put(fn)  # serialised once, not once per task
        cwd = os.getcwd()
        waiting = iter(tasks)
        running: list[Any] = []

        def submit() -> None:
            for task in waiting:
                running.append(remote.remote(fn_ref, task, cwd))
                if len(running) >= self.workers:
                    return

        try:
            submit()
            while running:
                ready, running[:] = ray.wait(running, num_returns=1)
                result = _result(ray, ready[0])
                submit()  # keep the workers busy while the caller handles the result
                yield result
        except BaseException:
            # The first error (or Ctrl-C, or the caller stopping early) ends the run: the tasks
            # not submitted never start, and the running ones finish, as in the local executor,
            # so that none writes into the directory after this returns; what they complete is
            # kept for the next run. Not ray.cancel: in Ray 2.60 it races with a task that is
            # finishing and aborts the driver ("Tried to complete task that was not pending",
            # ray-project/ray#54846), and at most `workers` tasks are submitted anyway.
            if running:
                ray.wait(running, num_returns=len(running))
            raise


def _call(fn: Callable[[Any], Any], task: Any, cwd: str) -> Any:
    """One task in a Ray worker; its tokenizer encodes on one thread, as in a local worker."""
    one_thread()
    # Relative paths (`-o data/out`, `corpus/*.jsonl`) mean what they mean on the driver, where
    # the shared filesystem has the same directory; a node without it fails on the path.
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(task)


def _result(ray: Any, ref: Any) -> Any:
    """The task's result, or its own exception: a DataError names the file and line, not Ray."""
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            raise
        if isinstance(cause, GristmillError):
            raise cause from None  # the user's input, not a bug: the message says it all
        raise cause from exc  # keeps the worker's traceback, which Ray formatted into exc


def _probe(address: str) -> None:
    """Fail fast where nothing listens at ``HOST:PORT``: Ray itself retries for minutes."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto", or a form only Ray understands
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise GristmillError(f"ray: cannot connect to {address}: {exc}") from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "the ray executor needs Ray: pip install 'gristmill[ray]'"
        ) from None
    return ray
