"""The ``local`` executor: prepare's tasks in this process, or in a pool of worker processes.

Workers start with ``spawn``: a fresh interpreter that imports gristmill and discovers its plugins
through entry points, never a fork of a process that may hold threads (a tokenizer's thread pool,
a progress bar's monitor). Each worker encodes on one core
(:func:`gristmill.plugin.workers.one_thread`), so that N workers use N cores without
oversubscribing them. A caller that knows it will have work for the pool starts it early
(:meth:`LocalExecutor.start`), with a warm-up that each worker runs as it starts: the workers'
start-up (an interpreter, imports, plugin discovery) then overlaps the caller's own preparations.
Once every task is done the workers are left to exit on their own (an interpreter's teardown),
while the caller goes on.

A worker ends when the process that started it dies, even by ``kill -9``: Linux kills it
(``PR_SET_PDEATHSIG``); elsewhere a thread of the worker watches for its parent to change.
Linux ties that signal to the thread that started the worker, and the pool starts workers as
tasks are submitted: drive ``map`` from a thread that outlives it (prepare uses its main thread). So a
killed run leaves no worker behind, writing or holding the run's output streams open.
A worker that dies (the out-of-memory killer) ends the run with an error naming it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from gristmill import hookimpl
from gristmill.errors import GristmillError
from gristmill.plugin.components import ExecutorType
from gristmill.plugin.workers import one_thread


class LocalExecutor:
    def __init__(self, workers: int = 1, **options: Any):
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None

    def start(self, warm: Callable[[], object] | None = None) -> None:
        """Start the worker processes now rather than at :meth:`map`; each runs ``warm`` (a
        picklable function) once, as it starts. One worker means no pool: nothing to start."""
        if self.workers == 1 or self._pool is not None:
            return
        self._pool = _new_pool(self.workers, warm)
        with _main_module_hidden():
            # The pool starts a process per submission while none is idle: one each.
            for _ in range(self.workers):
                self._pool.submit(_started)

    def close(self) -> None:
        """Stop a pool that :meth:`start` started and :meth:`map` did not use: its workers have
        run nothing but their warm-up, and end at once rather than once started up."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        pool, self._pool = self._pool, None
        if pool is None and (self.workers == 1 or len(tasks) <= 1):
            for task in tasks:
                yield fn(task)
            return
        pool = pool or _new_pool(self.workers, None)
        processes: list[multiprocessing.process.BaseProcess] = []
        try:
            with _main_module_hidden():  # workers start as the tasks are submitted
                futures = [pool.submit(fn, task) for task in tasks]
            # The pool's workers (a private attribute): to name one that dies.
            processes = list((getattr(pool, "_processes", None) or {}).values())
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:
                # A failed task ends the run: start nothing new (running tasks finish;
                # whatever they completed is kept for the next run).
                for future in futures:
                    future.cancel()
                pool.shutdown(wait=True)
                raise
        except BrokenProcessPool:  # the pool is shut down: every worker's exit code is known
            raise GristmillError(_dead_worker(processes)) from None
        # Every task is done: the workers only have to exit, which needs no waiting for.
        pool.shutdown(wait=False)


def _new_pool(workers: int, warm: Callable[[], object] | None) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), warm),
    )


def _started() -> None:
    """What :meth:`LocalExecutor.start` submits to start each worker: nothing to do."""


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start workers without the caller's ``__main__``.

    A spawned process re-runs the script that started its parent (to find functions defined
    there), so a script calling ``prepare`` without an ``if __name__ == "__main__":`` guard would
    prepare again in every worker, and a script read from stdin cannot be re-run at all. The
    tasks need nothing from ``__main__``: while workers start, it is an empty module.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _dead_worker(processes: list[multiprocessing.process.BaseProcess]) -> str:
    """Which worker died, and what to do."""
    advice = (
        "run the same command again with fewer --workers or a smaller --task-bytes (finished "
        "tasks are kept)"
    )
    # The pool ends the other workers with SIGTERM once one has died.
    ended = [p for p in processes if p.exitcode not in (None, 0, -signal.SIGTERM)]
    ended = ended or [p for p in processes if p.exitcode not in (None, 0)]
    if not ended:
        return f"a worker process died unexpectedly: {advice}"
    worker = ended[0]
    code = worker.exitcode or 0
    if code < 0:
        name = signal.Signals(-code).name
        cause = ", often the out-of-memory killer" if -code == signal.SIGKILL else ""
        return f"worker process {worker.pid} was killed by {name}{cause}: {advice}"
    return f"worker process {worker.pid} exited with status {code}: {advice}"


def _start_worker(parent: int, warm: Callable[[], object] | None = None) -> None:
    one_thread()
    _large_blocks_mapped()
    _end_with_parent(parent)
    if warm is not None:
        # A warm-up that fails fails again in the first task, which reports it as its error.
        with contextlib.suppress(Exception):
            warm()


M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD = 4 << 20  # a shard being written is above it; most of a batch's arrays, below


def _large_blocks_mapped() -> None:
    """Have glibc serve every block of MMAP_THRESHOLD bytes or more with a mapping of its own,
    which goes back to the system when the block is freed.

    By default glibc raises that threshold (up to 32 MiB) each time such a block is freed;
    from then on a task's arrays (a batch's ids, a shard being written: MiB to tens of MiB)
    come from the heap, whose freed pages stay in the worker's resident memory, and a worker
    grows task after task. Elsewhere than on glibc this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl)
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5  # how often a worker without PR_SET_PDEATHSIG looks for its parent


def _end_with_parent(parent: int) -> None:
    """Have this worker killed when ``parent`` (the process that started it) dies."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the signal was asked for
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    # An orphan is adopted by another process: its parent id changes.
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


@hookimpl
def gristmill_executors() -> list[ExecutorType]:
    return [
        ExecutorType(
            name="local",
            description="this machine: in-process for one worker, else a pool of processes",
            factory=LocalExecutor,
        )
    ]
