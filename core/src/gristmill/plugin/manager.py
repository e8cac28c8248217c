"""Plugin discovery and the typed registry the rest of gristmill talks to.

Every plugin, first-party or not, comes in through one door: the ``gristmill`` entry-point group.
Feature code never calls ``pm.hook.*``; it asks this manager for a component by its record type
and name (``manager.get(PackerType, "first-fit")``), and gets that record type back.

Reaching the manager: gristmill's public entry points (``prepare``, ``open_dataset``, the CLI…)
take ``manager=None`` and use :func:`get_manager` only when none is given; everything below them
is handed the manager explicitly, so a caller's own manager is the one used all the way down.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar, cast, overload

import pluggy

from gristmill.errors import PluginError, UnknownComponentError
from gristmill.plugin import components as records
from gristmill.plugin import hookspecs, renamed
from gristmill.plugin.components import RECORD_TYPES, Component, FieldMapperType

log = logging.getLogger("gristmill")

ENTRY_POINT_GROUP = "gristmill"
DISABLE_ENV = "GRISTMILL_DISABLE_PLUGINS"
ALLOW_ENV = "GRISTMILL_PLUGINS"

C = TypeVar("C", bound=Component)
Claimant = TypeVar("Claimant", records.SourceType, records.TokenizerType)
Registry = dict[
    type[Component], dict[str, tuple[Component, str]]
]  # kind -> name -> (record, plugin)


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


class _Deprecated(Generic[C]):
    """``manager.source(name)`` and its like: ``manager.get(SourceType, name)``, warning."""

    def __init__(self, kind: type[C]):
        self.kind = kind

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, manager: None, owner: type) -> _Deprecated[C]: ...
    @overload
    def __get__(self, manager: PluginManager, owner: type) -> Callable[[str], C]: ...
    def __get__(
        self, manager: PluginManager | None, owner: type
    ) -> _Deprecated[C] | Callable[[str], C]:
        if manager is None:  # looked up on the class (help(), inspect): no call, no warning
            return self
        warnings.warn(
            f"PluginManager.{self.name}(name) is deprecated: use get({self.kind.__name__}, name)",
            DeprecationWarning,
            stacklevel=2,
        )
        return lambda name: manager.get(self.kind, name)


class PluginManager:
    """Discovers plugins, validates what they register, and hands out components by name."""

    def __init__(self, *, discover: bool = True, environ: Mapping[str, str] | None = None):
        self._pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self._pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._registry: Registry | None = None
        # (record type, name) -> the plugins that register that name for that kind
        self.conflicts: dict[tuple[type[Component], str], list[str]] = {}
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
            known = ", ".join(record_type.hook for record_type in RECORD_TYPES)
            info.fail(f"implements unknown hook(s) {', '.join(unknown)}; known hooks: {known}")

    # -- the registry -----------------------------------------------------------------------------

    def _build(self) -> Registry:
        if self._registry is not None:
            return self._registry
        for info in self.plugins.values():
            info.components = {}
        offered = self._offered()
        registry: Registry = {record_type: {} for record_type in RECORD_TYPES}
        self.conflicts = {}
        for plugin_name, found in offered.items():
            info = self.plugins[plugin_name]
            for kind, record in found:
                taken = registry[kind].get(record.name)
                if taken is not None:
                    holders = self.conflicts.setdefault((kind, record.name), [taken[1]])
                    holders.append(plugin_name)
                    continue
                registry[kind][record.name] = (record, plugin_name)
                info.components.setdefault(kind.plural, []).append(record.name)
        self._registry = registry
        return registry

    def _offered(self) -> dict[str, list[tuple[type[Component], Component]]]:
        """Every valid record of every plugin that loaded, by plugin; a plugin whose hook raises
        or returns anything invalid fails as a whole and offers nothing."""
        offered: dict[str, list[tuple[type[Component], Component]]] = {}
        loaded = self._pm.list_name_plugin()
        for name, plugin in loaded:
            info = self.plugins.get(name)
            if info is None or info.status != "ok":
                continue
            # Call each plugin's hooks on their own (through pluggy, so wrappers and appended
            # arguments keep working) to know who registered what and to contain failures.
            others = [p for _, p in loaded if p is not plugin]
            found: list[tuple[type[Component], Component]] = []
            for record_type in RECORD_TYPES:
                caller = self._pm.subset_hook_caller(record_type.hook, remove_plugins=others)
                try:
                    results = [r for result in caller() for r in (result or ())]
                except Exception as exc:
                    info.fail(f"{record_type.hook}() raised {type(exc).__name__}: {exc}")
                    break
                problems = _problems(record_type, results)
                if problems:
                    info.fail("; ".join(problems))
                    break
                found += [(record_type, record) for record in results]
            if info.status == "ok":
                offered[name] = found
        return offered

    def components(self, kind: type[C]) -> dict[str, C]:
        """Every valid component of one kind, by name: ``components(PackerType)``."""
        kind = _checked(kind)
        return {
            name: record
            for name, (record, _) in self._build()[kind].items()
            if isinstance(record, kind)
        }

    def get(self, kind: type[C], name: str) -> C:
        """The component ``name`` of one kind: ``get(PackerType, "first-fit")``.

        ``name`` is read as users type it, for every kind alike: case and ``_`` for ``-`` do not
        matter (``First_Fit`` is ``first-fit``), and a number ending it (``window_16``,
        ``window-16``) names the component with its ``number_option`` set to that number: the
        record returned carries it in ``named_options``, which ``check_options`` adds to the
        user's options (and refuses beside a different value for it).

        Raises :class:`~gristmill.errors.PluginError` when two plugins register that name, and
        :class:`~gristmill.errors.UnknownComponentError` (listing what there is, and the plugins
        that failed to load) when none does.
        """
        kind = _checked(kind)
        registered = self._build()[kind]
        spelled = _spelled(name, registered)
        if spelled is None:
            raise self.unknown_error(kind, name, _unknown_name(kind, name, registered))
        found, named = spelled
        if (kind, found) in self.conflicts:
            raise PluginError(self._conflict_message(kind, found))
        record = registered[found][0]
        if not isinstance(record, kind):
            raise self.unknown_error(kind, name, f"no {kind.kind} named {name!r}")
        return dataclasses.replace(record, named_options=named) if named else record

    def provider(self, kind: type[Component], name: str) -> PluginInfo:
        """The plugin that registered a component."""
        return self.plugins[self._build()[_checked(kind)][name][1]]

    def failures(self) -> list[PluginInfo]:
        """Plugins that failed to load or registered something invalid."""
        self._build()
        return [p for p in self.plugins.values() if p.status == "error"]

    def conflict_messages(self) -> list[str]:
        """One message per name that two or more plugins register for the same kind."""
        self._build()
        return [self._conflict_message(kind, name) for kind, name in self.conflicts]

    def _conflict_message(self, kind: type[Component], name: str) -> str:
        holders = self.conflicts[(kind, name)]
        return (
            f"{kind.kind} {name!r} is registered by more than one plugin: "
            + " and ".join(self.plugins[p].label() for p in holders if p in self.plugins)
            + f"; block one of them by name with {DISABLE_ENV}"
        )

    def unknown_error(self, kind: type[Component], name: str, message: str) -> Exception:
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

    def field_mappers(self) -> list[FieldMapperType]:
        """All field mappers, highest detection priority first."""
        return sorted(self.components(FieldMapperType).values(), key=lambda m: -m.priority)

    def claim(self, kind: type[Claimant], spec: str, *, by: str) -> Claimant | None:
        """The source or tokenizer claiming ``spec`` by its longest ``"prefixes"`` or ``"suffixes"``.

        Two components claiming the same longest affix is an error naming both.
        """
        text = spec if by == "prefixes" else spec.lower()
        claims: dict[str, list[str]] = {}
        for name, record in self.components(kind).items():
            for affix in record.prefixes if by == "prefixes" else record.suffixes:
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
        return self.get(kind, claims[affix][0])

    # -- deprecated getters -----------------------------------------------------------------------
    # Plugin authors' code and tests call these; they keep working for one release, warning.

    source = _Deprecated(records.SourceType)
    field_mapper = _Deprecated(records.FieldMapperType)
    tokenizer = _Deprecated(records.TokenizerType)
    shard_format = _Deprecated(records.ShardFormatType)
    packer = _Deprecated(records.PackerType)
    sampler = _Deprecated(records.SamplerType)
    preset = _Deprecated(records.PresetType)
    executor = _Deprecated(records.ExecutorType)
    exporter = _Deprecated(records.ExporterType)


NUMBERED = re.compile(r"(?P<base>.+)-(?P<number>[0-9]+)")


def _spelled(name: str, registered: Mapping[str, Any]) -> tuple[str, dict[str, int]] | None:
    """The registered name that ``name`` spells, with the options a number ending it sets."""
    if name in registered:
        return name, {}
    plain = name.lower().replace("_", "-")
    if plain in registered:
        return plain, {}
    numbered = NUMBERED.fullmatch(plain)
    if numbered is None or numbered["base"] not in registered:
        return None
    option = registered[numbered["base"]][0].number_option
    if option is None:
        return None
    return numbered["base"], {option: int(numbered["number"])}


def _unknown_name(kind: type[Component], name: str, registered: Mapping[str, Any]) -> str:
    numbered = NUMBERED.fullmatch(name.lower().replace("_", "-"))
    if numbered is not None and numbered["base"] in registered:
        return (
            f"no {kind.kind} named {name!r}: {kind.kind} {numbered['base']!r} takes no number "
            "after its name"
        )
    return f"no {kind.kind} named {name!r}"


def _problems(record_type: type[Component], results: list[Any]) -> list[str]:
    """What is wrong with what one plugin's hook returned for ``record_type``."""
    problems = [
        problem
        for record in results
        for problem in (
            record.problems()
            if isinstance(record, record_type)
            else [f"{record_type.hook}() returned {record!r}, not a {record_type.__name__}"]
        )
    ]
    names = [r.name for r in results if isinstance(r, record_type)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    return problems + [f"registers {record_type.kind} {n!r} twice" for n in repeated]


def _checked(kind: type[C] | str) -> type[C]:
    """``kind``, a record type; a kind's old key (``"sources"``) still works for one release."""
    if not isinstance(kind, str):
        return kind
    record_type = records.KINDS[kind][1]
    warnings.warn(
        f"looking components up by {kind!r} is deprecated: pass the record type, "
        f"{record_type.__name__}",
        DeprecationWarning,
        stacklevel=3,
    )
    return cast("type[C]", record_type)


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
