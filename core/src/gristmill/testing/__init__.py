"""A pytest plugin and a conformance kit for people who write or test gristmill plugins.

Installed with gristmill (entry point ``pytest11``), so these fixtures are available in any test
suite of an environment that has gristmill:

- ``gristmill_manager``: a freshly discovered :class:`~gristmill.plugin.manager.PluginManager`, installed
  as the process-wide manager for the duration of the test (so ``gristmill.prepare``, the CLI and
  ``open_dataset`` all see it), then the previous one is restored.
- ``gristmill_register``: ``register(plugin, name=...)`` adds a plugin object (a module, class or
  instance with ``@hookimpl`` functions) to that manager for one test.

The conformance kit checks the contracts of every component kind (sources, field mappers,
tokenizers, shard formats, packers, samplers, exporters, executors, presets) on the registered
components. One line in a plugin's tests runs it over that plugin's components::

    from gristmill.testing import conformance

    test_conformance = conformance("myplugin")

See :func:`conformance` for the inputs a component may need (a source's files, a tokenizer's
spec). Importing this module stays cheap: pytest loads it in every run; the kit's checks are
imported when :func:`conformance` is called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

from gristmill.plugin.manager import PluginInfo, PluginManager, set_manager

__all__ = ["Unavailable", "conformance", "gristmill_manager", "gristmill_register"]


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


def conformance(*plugins: str, **inputs: Any) -> Callable[..., None]:
    """A pytest test, parametrized over every check of every component the ``plugins`` (their
    entry-point names; none: every registered plugin) register. Assign it to a ``test_`` name.

    Keywords: ``manager`` (default: a freshly discovered one); ``sources`` (source name → a
    function ``write(folder, records) -> spec`` that stores records such as ``{"text": ...}``
    in the source's format, or a fixed spec, whose records are then not compared); ``tokenizers``
    (name → a spec, or a function ``make(folder) -> spec``); ``records`` (field mapper name →
    records it maps). An input given as :class:`Unavailable` reports its check as skipped, with
    its reason. Sources claiming ``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet`` or
    ``.txt`` (one record per line) files, and tokenizers claimed by their name alone, need none.
    """
    from gristmill.testing.kit import conformance_test

    return conformance_test(plugins, **inputs)


class Unavailable(NamedTuple):
    """An input the kit cannot have here (a network dataset, a licensed file): the checks that
    need it are reported as skipped, with ``reason``."""

    reason: str
