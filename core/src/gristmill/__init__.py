"""gristmill: raw training data to exactly packed, resumable PyTorch batches.

Importing this package is cheap (pluggy and numpy only): heavy libraries load inside the
components that need them.
"""

from __future__ import annotations

from gristmill._version import __version__
from gristmill.config import from_config
from gristmill.dataset import open_dataset
from gristmill.errors import DataError, DatasetError, GristmillError, PluginError
from gristmill.examples import Example
from gristmill.export import export
from gristmill.hookspecs import hookimpl
from gristmill.mixture import mixture
from gristmill.pipeline import prepare
from gristmill.stream import stream

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
