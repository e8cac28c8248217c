"""What an executor's worker process does before it runs prepare's tasks; giving memory back.

Each worker encodes on one core, its tokenizer's thread pool limited to one thread, so that N
workers use N cores without oversubscribing them. Every executor that runs tasks in processes of
its own (``local``, ``ray``) calls :func:`one_thread` in each worker.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

ONE_THREAD = {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def one_thread() -> None:
    """Limit the thread pools of this process's tokenizers (and their libraries) to one thread."""
    os.environ.update(ONE_THREAD)


def trim_memory() -> None:
    """Return the heap's free pages to the operating system (glibc's ``malloc_trim``).

    Freed memory otherwise stays with the process, counted in its resident set: worth giving
    back when the process is done with it (a run's tokenizer, a finished task's buffers, which
    would otherwise add up task after task in a long-lived worker). Elsewhere than on glibc
    this does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl)
        return None
    return trim
