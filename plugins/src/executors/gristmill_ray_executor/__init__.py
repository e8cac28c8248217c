"""The ``ray`` executor: prepare's tasks as Ray tasks, on this machine or on a Ray cluster.

Importing this plugin does not import Ray (every rank imports every plugin, and ``gristmill
plugins`` must list it without the extra); Ray loads when a run starts. The tasks are the ones the
local executor runs, and their workers encode on one thread as its workers do
(:mod:`gristmill.plugin.workers`), so the output is byte-identical; each writes its shards and record into the
output directory itself, which every Ray node must therefore see (a shared filesystem).
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import ExecutorType
from gristmill_ray_executor.executor import RayExecutor

__all__ = ["RayExecutor"]


@hookimpl
def gristmill_executors() -> list[ExecutorType]:
    return [
        ExecutorType(
            name="ray",
            description="Ray tasks: a local Ray of --workers CPUs, or a cluster (--ray-address); "
            "needs a filesystem shared by every node",
            requires="ray",
            factory=RayExecutor,
            options={"address": "a Ray cluster: HOST:PORT, ray://HOST:10001 or auto"},
        )
    ]
