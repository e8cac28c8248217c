"""The ``local`` executor: prepare's tasks in this process, or in a pool of worker processes.

Workers start with ``spawn``: a fresh interpreter that imports gristmill and discovers its plugins
through entry points, never a fork of a process that may hold threads (a tokenizer's thread pool,
a progress bar's monitor). Each worker encodes on one core, its tokenizer's thread pool limited
to one thread, so that N workers use N cores without oversubscribing them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from gristmill import hookimpl
from gristmill.components import ExecutorType

ONE_THREAD = {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


class LocalExecutor:
    def __init__(self, workers: int = 1, **options: Any):
        self.workers = max(1, int(workers))

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_one_thread) as pool:
            with _main_module_hidden():  # workers start as the tasks are submitted
                futures = [pool.submit(fn, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:
                # A failed task ends the run: start nothing new (running tasks finish; whatever
                # they completed is kept for the next run).
                for future in futures:
                    future.cancel()
                raise


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


def _one_thread() -> None:
    os.environ.update(ONE_THREAD)


@hookimpl
def gristmill_executors() -> list[ExecutorType]:
    return [
        ExecutorType(
            name="local",
            description="this machine: in-process for one worker, else a pool of processes",
            factory=LocalExecutor,
        )
    ]
