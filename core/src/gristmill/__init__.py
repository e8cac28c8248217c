"""gristmill: raw training data to exactly packed, resumable PyTorch batches.

Importing this package is cheap: the names below load their module on first use, so a plugin's
``from gristmill import hookimpl`` loads the plugin kit only, not the read or write side.

The layers, lowest first (each imports only those below it; ``.importlinter`` holds the rule):
``plugin`` (what plugin authors import), ``options`` (every option of the calls, declared once),
``ingest`` (records → token documents), ``store``
(datasets on disk: prepare, convert, verify), ``serve`` (samples from datasets and streams),
``torch``, then ``config`` and ``cli``. docs/architecture.md describes each.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from gristmill import _moved
from gristmill._version import __version__
from gristmill.errors import DataError, DatasetError, GristmillError, PluginError
from gristmill.plugin.hookspecs import hookimpl

if TYPE_CHECKING:
    from gristmill.config import from_config
    from gristmill.plugin.examples import Example
    from gristmill.serve.dataset import open_dataset
    from gristmill.serve.export import export
    from gristmill.serve.mixture import mixture
    from gristmill.serve.stream import stream
    from gristmill.store.prepare import prepare

_moved.install()

_LAZY = {
    "Example": "gristmill.plugin.examples",
    "export": "gristmill.serve.export",
    "from_config": "gristmill.config",
    "mixture": "gristmill.serve.mixture",
    "open_dataset": "gristmill.serve.dataset",
    "prepare": "gristmill.store.prepare",
    "stream": "gristmill.serve.stream",
}

__all__ = [
    "DataError",
    "DatasetError",
    "Example",
    "GristmillError",
    "PluginError",
    "__version__",
    "export",
    "from_config",
    "hookimpl",
    "mixture",
    "open_dataset",
    "prepare",
    "stream",
]


class _Package(ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing an old module path (gristmill.stream, see _moved) would set the package's
        # attribute of that name to the module, hiding the function of the same name.
        if name in _LAZY and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gristmill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
