"""What an executor's worker process does before it runs prepare's tasks.

Each worker encodes on one core, its tokenizer's thread pool limited to one thread, so that N
workers use N cores without oversubscribing them. Every executor that runs tasks in processes of
its own (``local``, ``ray``) calls :func:`one_thread` in each worker.
"""

from __future__ import annotations

import os

ONE_THREAD = {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def one_thread() -> None:
    """Limit the thread pools of this process's tokenizers (and their libraries) to one thread."""
    os.environ.update(ONE_THREAD)
