"""The conformance kit's frame: which checks run on which registered component, with what input.

Each component kind has a module of checks (``sources``, ``fields``, ``tokenizers``, ``shards``,
``packers``, ``samplers``, ``exporters``, ``others``); each check is a function
``check(record, context)`` that raises ``AssertionError`` naming the broken invariant. A check
that cannot run here calls ``pytest.skip`` with its reason; a component whose record names an
extra (``requires``) and that raises ``ImportError`` is skipped the same way, saying so.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gristmill.plugin.components import Component
from gristmill.plugin.manager import PluginManager
from gristmill.testing import Unavailable

# check(record, context): the record is of the kind the check is for.
Check = Callable[[Any, "Context"], None]


@dataclass
class Inputs:
    """What the user gives for components the kit cannot feed alone, and what was made of it."""

    sources: Mapping[str, Any] = field(default_factory=dict)
    tokenizers: Mapping[str, Any] = field(default_factory=dict)
    records: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    made: dict[str, Any] = field(default_factory=dict)  # built once per test session


@dataclass
class Context:
    """What a check works with: the manager, the inputs, a fresh folder of its own, and a way to
    build something once for every check that needs it (a trained tokenizer, a dataset)."""

    manager: PluginManager
    inputs: Inputs
    tmp_path: Path
    factory: pytest.TempPathFactory

    def folder(self) -> Path:
        """A new empty folder."""
        return Path(tempfile.mkdtemp(dir=self.tmp_path))

    def once(self, key: str, make: Callable[[Path], Any]) -> Any:
        """``make(folder)``, called the first time ``key`` is asked for in this session."""
        if key not in self.inputs.made:
            self.inputs.made[key] = make(self.factory.mktemp("kit"))
        return self.inputs.made[key]


def given(value: Any, what: str) -> Any:
    """``value``, unless it is an :class:`Unavailable`: then skip, saying why."""
    if isinstance(value, Unavailable):
        pytest.skip(f"{what}: {value.reason}")
    return value


@dataclass(frozen=True)
class Case:
    kind: str  # the record type's plural ("packers"), or "plugins"
    record: Any  # the component's record, or the plugin's name for "plugins"
    check: str
    run: Callable[[Any, Context], None]

    @property
    def id(self) -> str:
        name = self.record if isinstance(self.record, str) else self.record.name
        return f"{self.kind}/{name}/{self.check}"

    def __call__(self, context: Context) -> None:
        try:
            self.run(self.record, context)
        except ImportError as exc:
            requires = getattr(self.record, "requires", None)
            if requires is None:
                raise  # a component needing a library must say which extra installs it
            pytest.skip(
                f"{self.record.kind} {self.record.name!r} needs its extra {requires!r}, "
                f"which is not installed here ({exc})"
            )


def _checks() -> dict[type[Component], Callable[[Any], dict[str, Check]]]:
    """Record type → a function giving the checks that apply to one record of that type."""
    from gristmill.plugin import components as c
    from gristmill.testing import (
        exporters,
        fields,
        others,
        packers,
        samplers,
        shards,
        sources,
        tokenizers,
    )

    return {
        c.SourceType: sources.checks,
        c.FieldMapperType: fields.checks,
        c.TokenizerType: tokenizers.checks,
        c.ShardFormatType: shards.checks,
        c.PackerType: packers.checks,
        c.SamplerType: samplers.checks,
        c.ExporterType: exporters.checks,
        c.ExecutorType: others.executor_checks,
        c.PresetType: others.preset_checks,
    }


def cases(manager: PluginManager, plugins: Iterable[str] = ()) -> list[Case]:
    """Every check of every component the ``plugins`` register (all plugins when empty)."""
    plugins = list(plugins)
    found = [_loads(name) for name in plugins]
    for kind, checks_of in _checks().items():
        for name, record in sorted(manager.components(kind).items()):
            if plugins and manager.provider(kind, name).name not in plugins:
                continue
            found += [Case(kind.plural, record, c, run) for c, run in checks_of(record).items()]
    return found


def _loads(plugin: str) -> Case:
    """A case that fails unless ``plugin`` loaded and registers something: a kit run over a
    plugin that is missing must not pass for having found nothing to check."""

    def run(name: str, context: Context) -> None:
        info = context.manager.plugins.get(name)
        assert info is not None, (
            f"no plugin named {name!r} is installed (entry-point group gristmill)"
        )
        assert info.status == "ok", info.error
        assert info.components, f"plugin {name!r} registers no component"

    return Case("plugins", plugin, "loads", run)


def conformance_test(
    plugins: Sequence[str],
    *,
    manager: PluginManager | None = None,
    sources: Mapping[str, Any] | None = None,
    tokenizers: Mapping[str, Any] | None = None,
    records: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> Callable[..., None]:
    """The parametrized test behind :func:`gristmill.testing.conformance`."""
    manager = manager or PluginManager()
    inputs = Inputs(sources or {}, tokenizers or {}, records or {})
    found = cases(manager, plugins)

    @pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in found])
    def test_conformance(
        case: Case,
        tmp_path: Path,
        tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        if "GRISTMILL_CACHE_DIR" not in os.environ:  # stamps of checked files: not the user's
            monkeypatch.setenv("GRISTMILL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        case(Context(manager, inputs, tmp_path, tmp_path_factory))

    return test_conformance
