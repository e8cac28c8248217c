"""An executor that runs prepare's tasks in the local executor's worker processes and reports
what each worker's tokenizer did: its engine, and whether the worker imported ``tokenizers`` (the
reference engine's library). A module of its own, which the workers import to run its function:
a test module would import ``tokenizers`` into every worker itself."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, ClassVar

from gristmill_local_executor import LocalExecutor


class ReportingExecutor(LocalExecutor):
    """The local executor; ``reports``: per task run, what its worker said."""

    reports: ClassVar[list[dict[str, Any]]] = []

    def map(self, fn, tasks):
        for summary in super().map(functools.partial(_run_and_report, fn), tasks):
            ReportingExecutor.reports.append(summary.pop("worker"))
            yield summary


def _run_and_report(fn, task) -> dict[str, Any]:
    summary = fn(task)
    from gristmill.store import tasks

    [tok] = tasks._loaded.values()  # the copy of the tokenizer this worker loaded
    worker = {"pid": os.getpid(), "engine": tok.engine, "tokenizers": "tokenizers" in sys.modules}
    return {**summary, "worker": worker}
