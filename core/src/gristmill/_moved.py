"""Module paths of the flat layout, kept importable for one release.

Plugins and scripts written against ``gristmill.components``, ``gristmill.pipeline`` … keep
working: importing an old name warns (``DeprecationWarning``, naming the new path) and gives the
new module itself, so attributes, ``isinstance`` checks and monkeypatching behave as before.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import FrameType, ModuleType

MOVED = {
    "gristmill.arguments": "gristmill.plugin.arguments",
    "gristmill.components": "gristmill.plugin.components",
    "gristmill.examples": "gristmill.plugin.examples",
    "gristmill.files": "gristmill.plugin.files",
    "gristmill.hookspecs": "gristmill.plugin.hookspecs",
    "gristmill.overlong": "gristmill.plugin.overlong",
    "gristmill.packing": "gristmill.plugin.packing",
    "gristmill.plugins": "gristmill.plugin.manager",
    "gristmill.encoding": "gristmill.ingest.encoding",
    "gristmill.mapping": "gristmill.ingest.mapping",
    "gristmill.policy": "gristmill.ingest.policy",
    "gristmill.sources": "gristmill.ingest.sources",
    "gristmill.tokenizers": "gristmill.ingest.tokenizers",
    "gristmill.convert": "gristmill.store.convert",
    "gristmill.integrity": "gristmill.store.integrity",
    "gristmill.manifest": "gristmill.store.manifest",
    "gristmill.merge": "gristmill.store.merge",
    "gristmill.pipeline": "gristmill.store.prepare",
    "gristmill.resume": "gristmill.store.claim",
    "gristmill.stats": "gristmill.store.stats",
    "gristmill.tasks": "gristmill.store.tasks",
    "gristmill.verify": "gristmill.store.verify",
    "gristmill.dataset": "gristmill.serve.dataset",
    "gristmill.export": "gristmill.serve.export",
    "gristmill.mixture": "gristmill.serve.mixture",
    "gristmill.samples": "gristmill.serve.samples",
    "gristmill.sampling": "gristmill.serve.schedule",
    "gristmill.stream": "gristmill.serve.stream",
    "gristmill.plot": "gristmill.cli.plot",
    "gristmill.report": "gristmill.cli.report",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as the module that now holds its code."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old name goes away in the next release",
            DeprecationWarning,
            stacklevel=_caller_level(),
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module ran when it was imported


def _caller_level() -> int:
    """The stack level of the first frame outside the import machinery: the ``import`` line."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and (
        frame.f_code.co_filename.startswith("<frozen importlib") or frame.f_globals is globals()
    ):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
