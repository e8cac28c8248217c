"""A pytest plugin for people who write or test gristmill plugins.

Installed with gristmill (entry point ``pytest11``), so these fixtures are available in any test
suite of an environment that has gristmill:

- ``gristmill_manager``: a freshly discovered :class:`~gristmill.plugin.manager.PluginManager`, installed
  as the process-wide manager for the duration of the test (so ``gristmill.prepare``, the CLI and
  ``open_dataset`` all see it), then the previous one is restored.
- ``gristmill_register``: ``register(plugin, name=...)`` adds a plugin object (a module, class or
  instance with ``@hookimpl`` functions) to that manager for one test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from gristmill.plugin.manager import PluginInfo, PluginManager, set_manager


@pytest.fixture
def gristmill_manager() -> Iterator[PluginManager]:
    manager = PluginManager()
    previous = set_manager(manager)
    try:
        yield manager
    finally:
        set_manager(previous)


@pytest.fixture
def gristmill_register(gristmill_manager: PluginManager) -> Callable[..., PluginInfo]:
    def register(plugin: object, name: str = "test-plugin") -> PluginInfo:
        return gristmill_manager.register(plugin, name)

    return register
