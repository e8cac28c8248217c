"""Plugin discovery and the typed registry the rest of gristmill talks to.

Every plugin, first-party or not, comes in through one door: the ``gristmill`` entry-point group.
Feature code never calls ``pm.hook.*``; it asks this manager for a component by kind and name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pluggy

from gristmill.errors import PluginError, UnknownComponentError
from gristmill.plugin import hookspecs, renamed
from gristmill.plugin.components import (
    KINDS,
    Component,
    ExecutorType,
    ExporterType,
    FieldMapperType,
    PackerType,
    PresetType,
    SamplerType,
    ShardFormatType,
    SourceType,
    TokenizerType,
)

log = logging.getLogger("gristmill")

ENTRY_POINT_GROUP = "gristmill"
DISABLE_ENV = "GRISTMILL_DISABLE_PLUGINS"
ALLOW_ENV = "GRISTMILL_PLUGINS"

C = TypeVar("C", bound=Component)


@dataclass
class PluginInfo:
    """One plugin as discovered: where it comes from and whether it loaded."""

    name: str
    dist: str | None = None
    version: str | None = None
    entry_point: str | None = None
    status: str = "ok"  # "ok" | "error" | "blocked"
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)  # kind -> names

    def label(self) -> str:
        origin = f"{self.dist or 'registered at runtime'} {self.version or ''}".strip()
        where = f", entry point {self.entry_point}" if self.entry_point else ""
        return f"plugin {self.name!r} ({origin}{where})"

    def fail(self, reason: str) -> None:
        self.status = "error"
        self.error = f"{self.label()} failed to load: {reason}"
        self.components = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.dist,
            "version": self.version,
            "entry_point": self.entry_point,
            "status": self.status,
            "error": self.error,
            "components": self.components,
        }


def _names(value: str | None) -> set[str]:
    return renamed.current(
        {n.strip() for n in (value or "").replace(";", ",").split(",") if n.strip()}
    )


class PluginManager:
    """Discovers plugins, validates what they register, and hands out components by name."""

    def __init__(self, *, discover: bool = True, environ: Mapping[str, str] | None = None):
        self._pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self._pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._registry: dict[str, dict[str, tuple[Component, str]]] | None = None
        self.conflicts: dict[tuple[str, str], list[str]] = {}
        if discover:
            self.discover(os.environ if environ is None else environ)

    # -- discovery and registration ---------------------------------------------------------------

    def discover(self, environ: Mapping[str, str]) -> None:
        """Load every plugin of the ``gristmill`` entry-point group, honouring the block/allow lists."""
        disabled = _names(environ.get(DISABLE_ENV))
        allowed = _names(environ.get(ALLOW_ENV)) or None
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                dist=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                entry_point=ep.value,
            )
            if ep.name in self.plugins:
                info.fail(f"the name is already taken by {self.plugins[ep.name].label()}")
                self.plugins[f"{ep.name} ({info.dist})"] = info
                continue
            self.plugins[ep.name] = info
            if ep.name in disabled:
                info.status, info.error = "blocked", f"{info.label()} is blocked by {DISABLE_ENV}"
            elif allowed is not None and ep.name not in allowed:
                info.status, info.error = "blocked", f"{info.label()} is not listed in {ALLOW_ENV}"
            else:
                try:
                    plugin = ep.load()
                except Exception as exc:  # any import-time failure is the plugin's, reported below
                    info.fail(f"{type(exc).__name__}: {exc}")
                    continue
                self._add(plugin, info)
        for env, names in ((DISABLE_ENV, disabled), (ALLOW_ENV, allowed or set())):
            unknown = sorted(names - set(self.plugins))
            if unknown:
                log.warning(f"{env} names no installed plugin: {', '.join(unknown)}")
        self._registry = None

    def register(self, plugin: object, name: str) -> PluginInfo:
        """Register a plugin object at run time (tests, notebooks); returns its info."""
        if name in self.plugins:
            raise PluginError(f"a plugin named {name!r} is already registered")
        info = PluginInfo(name=name)
        self.plugins[name] = info
        self._add(plugin, info)
        self._registry = None
        self._build()  # validate its records now, not at the first lookup
        if info.status != "ok":
            self.unregister(name)
            raise PluginError(info.error or f"plugin {name!r} failed")
        return info

    def unregister(self, name: str) -> None:
        """Remove a plugin registered by :meth:`register` or discovery."""
        self.plugins.pop(name, None)
        if self._pm.has_plugin(name):
            self._pm.unregister(name=name)
        self._registry = None

    def _add(self, plugin: object, info: PluginInfo) -> None:
        try:
            self._pm.register(plugin, name=info.name)
        except Exception as exc:  # pluggy rejects malformed or already-registered plugins
            # pluggy appends its whole registry to some messages; the first line says it all.
            info.fail(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            return
        unknown = [c.name for c in self._pm.get_hookcallers(plugin) or () if c.spec is None]
        if unknown:
            self._pm.unregister(plugin)
            known = ", ".join(name for name, _ in KINDS.values())
            info.fail(f"implements unknown hook(s) {', '.join(unknown)}; known hooks: {known}")

    # -- the registry -----------------------------------------------------------------------------

    def _build(self) -> dict[str, dict[str, tuple[Component, str]]]:
        if self._registry is not None:
            return self._registry
        for info in self.plugins.values():
            info.components = {}
        offered: dict[str, dict[str, list[Component]]] = {}  # plugin -> kind -> records
        loaded = self._pm.list_name_plugin()
        for name, plugin in loaded:
            info = self.plugins.get(name)
            if info is None or info.status != "ok":
                continue
            # Call each plugin's hooks on their own (through pluggy, so wrappers and appended
            # arguments keep working) to know who registered what and to contain failures.
            others = [p for _, p in loaded if p is not plugin]
            for kind, (hook_name, record_type) in KINDS.items():
                caller = self._pm.subset_hook_caller(hook_name, remove_plugins=others)
                try:
                    records = [r for result in caller() for r in (result or ())]
                except Exception as exc:
                    info.fail(f"{hook_name}() raised {type(exc).__name__}: {exc}")
                    break
                problems = [
                    problem
                    for record in records
                    for problem in (
                        record.problems()
                        if isinstance(record, record_type)
                        else [f"{hook_name}() returned {record!r}, not a {record_type.__name__}"]
                    )
                ]
                names = [r.name for r in records if isinstance(r, record_type)]
                problems += [f"registers {record_type.kind} {n!r} twice" for n in _repeated(names)]
                if problems:
                    info.fail("; ".join(problems))
                    break
                if records:
                    offered.setdefault(name, {})[kind] = records
        registry: dict[str, dict[str, tuple[Component, str]]] = {kind: {} for kind in KINDS}
        self.conflicts = {}
        for plugin_name, kinds in offered.items():
            info = self.plugins[plugin_name]
            if info.status != "ok":
                continue
            for kind, records in kinds.items():
                for record in records:
                    taken = registry[kind].get(record.name)
                    if taken is not None:
                        holders = self.conflicts.setdefault((kind, record.name), [taken[1]])
                        holders.append(plugin_name)
                        continue
                    registry[kind][record.name] = (record, plugin_name)
                    info.components.setdefault(kind, []).append(record.name)
        self._registry = registry
        return registry

    def components(self, kind: str) -> dict[str, Component]:
        """Every valid component of one kind (``"sources"``, ``"tokenizers"``…), by name."""
        return {name: rec for name, (rec, _) in self._build()[kind].items()}

    def provider(self, kind: str, name: str) -> PluginInfo:
        """The plugin that registered a component."""
        return self.plugins[self._build()[kind][name][1]]

    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to load or registered something invalid."""
        self._build()
        return [p for p in self.plugins.values() if p.status == "error"]

    def conflict_messages(self) -> list[str]:
        """One message per name that two or more plugins register for the same kind."""
        self._build()
        return [self._conflict_message(kind, name) for kind, name in self.conflicts]

    def _conflict_message(self, kind: str, name: str) -> str:
        holders = self.conflicts[(kind, name)]
        return (
            f"{KINDS[kind][1].kind} {name!r} is registered by more than one plugin: "
            + " and ".join(self.plugins[p].label() for p in holders if p in self.plugins)
            + f"; block one of them by name with {DISABLE_ENV}"
        )

    def _get(self, kind: str, name: str, record_type: type[C]) -> C:
        registry = self._build()
        if (kind, name) in self.conflicts:
            raise PluginError(self._conflict_message(kind, name))
        if name in registry[kind]:
            record = registry[kind][name][0]
            assert isinstance(record, record_type)
            return record
        raise self.unknown_error(kind, name, f"no {record_type.kind} named {name!r}")

    def unknown_error(self, kind: str, name: str, message: str) -> Exception:
        """The error for a component nobody provides, pointing at plugins that failed to load."""
        for info in self.plugins.values():
            if info.name == name and info.status != "ok":
                return PluginError(info.error or info.label())
        available = ", ".join(sorted(self._build()[kind])) or "none"
        lines = [f"{message}; available: {available}"]
        broken = [p for p in self.plugins.values() if p.status != "ok"]
        if broken:
            lines.append("These plugins did not load and might provide it:")
            lines += [f"  - {p.error}" for p in broken]
        lines.append("Run `gristmill plugins --all` to see what is installed.")
        return UnknownComponentError("\n".join(lines))

    # -- typed getters ----------------------------------------------------------------------------

    def source(self, name: str) -> SourceType:
        return self._get("sources", name, SourceType)

    def field_mapper(self, name: str) -> FieldMapperType:
        return self._get("field_mappers", name, FieldMapperType)

    def tokenizer(self, name: str) -> TokenizerType:
        return self._get("tokenizers", name, TokenizerType)

    def shard_format(self, name: str) -> ShardFormatType:
        return self._get("shard_formats", name, ShardFormatType)

    def packer(self, name: str) -> PackerType:
        return self._get("packers", name, PackerType)

    def sampler(self, name: str) -> SamplerType:
        return self._get("samplers", name, SamplerType)

    def preset(self, name: str) -> PresetType:
        return self._get("presets", name, PresetType)

    def executor(self, name: str) -> ExecutorType:
        return self._get("executors", name, ExecutorType)

    def exporter(self, name: str) -> ExporterType:
        return self._get("exporters", name, ExporterType)

    def field_mappers(self) -> list[FieldMapperType]:
        """All field mappers, highest detection priority first."""
        found = [m for m in self.components("field_mappers").values()]
        return sorted(found, key=lambda m: -m.priority)  # type: ignore[attr-defined]

    def claim(self, kind: str, spec: str, *, by: str) -> Component | None:
        """The source or tokenizer claiming ``spec`` by its longest ``"prefixes"`` or ``"suffixes"``.

        Two components claiming the same longest affix is an error naming both.
        """
        text = spec if by == "prefixes" else spec.lower()
        claims: dict[str, list[str]] = {}
        for name, record in self.components(kind).items():
            for affix in getattr(record, by):
                affix = affix if by == "prefixes" else affix.lower()
                if text.startswith(affix) if by == "prefixes" else text.endswith(affix):
                    claims.setdefault(affix, []).append(name)
        if not claims:
            return None
        affix = max(claims, key=len)
        if len(claims[affix]) > 1:
            holders = [self.provider(kind, n).label() for n in claims[affix]]
            raise PluginError(
                f"{spec!r}: {affix!r} is claimed by {' and '.join(holders)}; "
                f"block one of them by name with {DISABLE_ENV}"
            )
        return self._get(kind, claims[affix][0], Component)


def _repeated(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, discovered on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def set_manager(manager: PluginManager | None) -> PluginManager | None:
    """Swap the process-wide manager (tests); returns the previous one."""
    global _manager
    previous, _manager = _manager, manager
    return previous
