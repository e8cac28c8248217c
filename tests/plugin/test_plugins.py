"""Discovery through the entry-point group: ok, import error, conflict, invalid, blocked."""

from __future__ import annotations

import json

import pytest

import gristmill
from gristmill import hookimpl
from gristmill.errors import PluginError, UnknownComponentError
from gristmill.plugin.components import (
    RECORD_TYPES,
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
from gristmill.plugin.manager import PluginManager
from tests.helpers import DISTS, run_gristmill

FIRST_PARTY = {
    "sample": {"sources": ["sample"]},
    "jsonl": {"sources": ["jsonl", "json"]},
    "fields": {"field_mappers": ["token-ids", "chat", "prompt-completion", "text"]},
    "byte": {"tokenizers": ["byte"]},
    "memmap-shards": {"shard_formats": ["memmap-shards"]},
    "none": {"packers": ["none"]},
    "window": {"packers": ["window"]},
    "text": {"sources": ["text"]},
    "arrow": {"sources": ["arrow"]},
    "synthetic": {"sources": ["synthetic"], "tokenizers": ["ids"]},
    "sequential": {"samplers": ["sequential"]},
}


def manager_with(monkeypatch, *dists: str, **environ: str) -> PluginManager:
    for name in dists:
        monkeypatch.syspath_prepend(str(DISTS / name))
    return PluginManager(environ=environ)


def test_first_party_plugins_come_through_the_entry_point_group():
    manager = PluginManager(environ={})
    for name, components in FIRST_PARTY.items():
        info = manager.plugins[name]
        manager.components(SourceType)
        assert info.status == "ok", info.error
        assert info.dist == "gristmill"
        assert info.entry_point is not None and info.entry_point.startswith("gristmill_")
        assert info.components == components


def test_a_third_party_distribution_is_discovered(monkeypatch):
    manager = manager_with(monkeypatch, "ok")
    info = manager.plugins["fake-ok"]
    assert (info.dist, info.version, info.status) == ("gristmill_fake_ok", "1.0", "ok")
    assert manager.get(SourceType, "lines").suffixes == (".lines",)
    assert manager.provider(SourceType, "lines") is info


def test_an_import_error_is_reported_with_distribution_version_and_entry_point(monkeypatch):
    manager = manager_with(monkeypatch, "broken")
    info = manager.plugins["fake-broken"]
    assert info.status == "error"
    assert info.error == (
        "plugin 'fake-broken' (gristmill_fake_broken 2.0, entry point gristmill_fake_broken) "
        "failed to load: ImportError: libfake.so: cannot open shared object file"
    )
    assert [p.name for p in manager.failures()] == ["fake-broken"]
    # A run that needs it fails with the same message.
    with pytest.raises(PluginError) as exc:
        manager.get(SourceType, "fake-broken")
    assert str(exc.value) == info.error
    # Asking for anything missing points at the broken plugin too.
    with pytest.raises(UnknownComponentError) as exc:
        manager.get(TokenizerType, "nope")
    assert info.error in str(exc.value)
    assert manager.get(SourceType, "jsonl")  # everything else still works


def test_a_name_conflict_names_both_providers(monkeypatch):
    manager = manager_with(monkeypatch, "clash")
    [message] = manager.conflict_messages()
    assert "source 'jsonl' is registered by more than one plugin" in message
    assert "plugin 'jsonl' (gristmill " in message
    assert (
        "plugin 'fake-clash' (gristmill_fake_clash 3.0, entry point gristmill_fake_clash)"
        in message
    )
    assert "block one of them by name with GRISTMILL_DISABLE_PLUGINS" in message
    with pytest.raises(PluginError, match="more than one plugin"):
        manager.get(SourceType, "jsonl")
    # Blocking one side resolves it.
    manager = manager_with(monkeypatch, "clash", GRISTMILL_DISABLE_PLUGINS="fake-clash")
    assert manager.conflict_messages() == []
    assert manager.provider(SourceType, "jsonl").name == "jsonl"


@pytest.mark.parametrize(
    ("dist", "plugin", "reason"),
    [
        ("badname", "fake-badname", "packer name 'Best Fit!' is invalid"),
        ("typo", "fake-typo", "implements unknown hook(s) gristmill_sourcs"),
    ],
)
def test_invalid_registrations_fail_the_plugin(monkeypatch, dist, plugin, reason):
    manager = manager_with(monkeypatch, dist)
    manager.components(PackerType)
    info = manager.plugins[plugin]
    assert info.status == "error"
    assert reason in info.error
    assert info.components == {}


def test_block_and_allow_lists(monkeypatch):
    manager = manager_with(monkeypatch, "ok", GRISTMILL_DISABLE_PLUGINS="fake-ok, jsonl")
    assert manager.plugins["fake-ok"].status == "blocked"
    assert "blocked by GRISTMILL_DISABLE_PLUGINS" in manager.plugins["jsonl"].error
    with pytest.raises(PluginError, match="blocked by GRISTMILL_DISABLE_PLUGINS"):
        manager.get(SourceType, "jsonl")
    manager = manager_with(monkeypatch, "ok", GRISTMILL_PLUGINS="fake-ok,byte")
    ok = {name for name, p in manager.plugins.items() if p.status == "ok"}
    assert ok == {"fake-ok", "byte"}
    assert "not listed in GRISTMILL_PLUGINS" in manager.plugins["sample"].error


class Broken:
    @hookimpl
    def gristmill_samplers(self):
        raise RuntimeError("boom")


class NotARecord:
    @hookimpl
    def gristmill_packers(self):
        return [{"name": "dict-packer"}]


class Twice:
    @hookimpl
    def gristmill_packers(self):
        return [PackerType(name="p", description="d", factory=str)] * 2


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (Broken(), "gristmill_samplers() raised RuntimeError: boom"),
        (NotARecord(), "gristmill_packers() returned {'name': 'dict-packer'}, not a PackerType"),
        (Twice(), "registers packer 'p' twice"),
    ],
)
def test_a_bad_registration_fails_only_its_plugin_and_is_undone(gristmill_manager, plugin, reason):
    with pytest.raises(PluginError) as exc:
        gristmill_manager.register(plugin, "bad")
    assert str(exc.value) == f"plugin 'bad' (registered at runtime) failed to load: {reason}"
    assert "bad" not in gristmill_manager.plugins and gristmill_manager.failures() == []
    assert set(gristmill_manager.components(SamplerType)) == {
        "sequential",
        "random",
        "distributed",
        "distributed-length-grouped",
        "shard-blocks",
    }
    gristmill_manager.register(object(), "bad")  # the name is free again


RECORDS = [
    SourceType(name="t-source", description="d", prefixes=("t:",), factory=str),
    FieldMapperType(name="t-mapper", description="d", detect=bool, factory=dict, priority=99),
    TokenizerType(name="t-tok", description="d", factory=str, load=str),
    ShardFormatType(name="t-shards", description="d", writer=str, reader=str),
    PackerType(name="t-packer", description="d", factory=str),
    SamplerType(name="t-sampler", description="d", factory=str),
    PresetType(name="t-preset", description="d", source="hub:org/name"),
    ExecutorType(name="t-executor", description="d", factory=str),
    ExporterType(name="t-exporter", description="d", export=dict),
]


def test_there_is_a_record_for_every_kind():
    assert [type(r) for r in RECORDS] == list(RECORD_TYPES)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.kind)
def test_every_kind_registers_through_its_hook_and_is_found_by_its_type(
    gristmill_register, gristmill_manager, record
):
    kind = type(record)
    plugin = type("P", (), {kind.hook: staticmethod(hookimpl(lambda: [record]))})
    gristmill_register(plugin, name=f"temp-{kind.plural.replace('_', '-')}")
    found: Component = gristmill_manager.get(kind, record.name)
    assert found is record
    assert gristmill_manager.components(kind)[record.name] is record
    assert gristmill_manager.plugins[f"temp-{kind.plural.replace('_', '-')}"].components == {
        kind.plural: [record.name]
    }


def test_a_kind_is_looked_up_by_its_record_type_only(gristmill_manager):
    packers = gristmill_manager.components(PackerType)
    assert packers and all(isinstance(p, PackerType) for p in packers.values())
    assert "jsonl" not in packers and "jsonl" in gristmill_manager.components(SourceType)
    with pytest.raises(UnknownComponentError, match="no packer named 'jsonl'"):
        gristmill_manager.get(PackerType, "jsonl")


def test_string_kinds_and_the_old_getters_still_work_for_a_release_with_a_warning(
    gristmill_manager,
):
    with pytest.warns(DeprecationWarning, match=r"by 'sources' is deprecated: .* SourceType"):
        assert gristmill_manager.components("sources") == gristmill_manager.components(SourceType)
    with pytest.warns(DeprecationWarning, match="by 'sources' is deprecated"):
        assert gristmill_manager.provider("sources", "jsonl").name == "jsonl"
    with pytest.warns(DeprecationWarning, match=r"packer\(name\) is deprecated: use get\("):
        assert gristmill_manager.packer("none") is gristmill_manager.get(PackerType, "none")


def test_registering_later_rebuilds_the_registry_cleanly(gristmill_manager):
    gristmill_manager.components(SourceType)
    before = {name: dict(p.components) for name, p in gristmill_manager.plugins.items()}
    assert before["byte"] == {"tokenizers": ["byte"]}
    with pytest.raises(PluginError):
        gristmill_manager.register(NotARecord(), "junk")
    after = {n: p.components for n, p in gristmill_manager.plugins.items() if n != "junk"}
    assert after == before


def test_registering_a_taken_plugin_name_is_refused(gristmill_register):
    with pytest.raises(PluginError, match="already registered"):
        gristmill_register(object(), name="jsonl")


def test_unknown_component_lists_what_is_available(gristmill_manager):
    with pytest.raises(
        UnknownComponentError,
        match="no packer named 'best'; available: concat-chunk, first-fit, greedy-stream, none",
    ):
        gristmill_manager.get(PackerType, "best")


def test_plugins_command_lists_components_and_reports_failures():
    result = run_gristmill("plugins", "--json", extra_path=[DISTS / "ok", DISTS / "broken"])
    assert result.returncode == 1  # a plugin failed to load
    listing = json.loads(result.stdout)
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert by_name["fake-ok"]["components"] == {"sources": ["lines"]}
    assert by_name["fake-broken"]["status"] == "error"
    assert "ImportError: libfake.so" in by_name["fake-broken"]["error"]
    assert by_name["byte"]["version"] and by_name["byte"]["distribution"] == "gristmill"

    text = run_gristmill("plugins", extra_path=[DISTS / "broken"])
    assert "fake-broken" in text.stdout and "gristmill_fake_broken 2.0" in text.stdout
    assert "failed to load: ImportError" in text.stdout


def test_plugins_all_shows_blocked_plugins_and_descriptions():
    env = {"GRISTMILL_DISABLE_PLUGINS": "sequential"}
    plain = run_gristmill("plugins", env=env)
    assert plain.returncode == 0, plain.stderr
    assert "sequential" not in plain.stdout
    full = run_gristmill("plugins", "--all", env=env)
    assert "blocked by GRISTMILL_DISABLE_PLUGINS" in full.stdout
    assert "tokenizer byte: UTF-8 bytes" in full.stdout
    listing = json.loads(run_gristmill("plugins", "--all", "--json", env=env).stdout)
    assert listing["components"]["packers"]["none"]["description"]
    assert {p["name"]: p["status"] for p in listing["plugins"]}["sequential"] == "blocked"


def test_two_sources_claiming_one_suffix_is_an_error_naming_both(gristmill_register, tmp_path):
    other = SourceType(name="fast-jsonl", description="d", suffixes=(".JSONL",), factory=str)
    gristmill_register(
        type("P", (), {"gristmill_sources": staticmethod(hookimpl(lambda: [other]))})
    )
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "x"}\n')
    with pytest.raises(PluginError) as exc:
        gristmill.prepare(path, tmp_path / "out", progress=False)
    assert "'.jsonl' is claimed by plugin 'jsonl' (gristmill " in str(exc.value)
    assert "and plugin 'test-plugin' (registered at runtime)" in str(exc.value)


def test_a_conflict_is_reported_for_its_own_kind_only(gristmill_register, gristmill_manager):
    twin = TokenizerType(name="byte", description="d", factory=str, load=str)
    gristmill_register(
        type("P", (), {"gristmill_tokenizers": staticmethod(hookimpl(lambda: [twin]))})
    )
    with pytest.raises(PluginError, match="tokenizer 'byte' is registered by more than one"):
        gristmill_manager.get(TokenizerType, "byte")
    assert gristmill_manager.get(SourceType, "jsonl")


def test_unknown_names_in_the_block_list_are_warned_about(monkeypatch, caplog):
    with caplog.at_level("WARNING", logger="gristmill"):
        manager_with(monkeypatch, GRISTMILL_DISABLE_PLUGINS="jsnol")
    assert "GRISTMILL_DISABLE_PLUGINS names no installed plugin: jsnol" in caplog.text


def test_the_pytest_fixtures_register_for_one_test_only(pytester):
    pytester.makepyfile(
        """
        from gristmill import hookimpl
        from gristmill.plugin.components import PackerType
        from gristmill.plugin.manager import get_manager

        ORIGINAL = get_manager()

        class Plugin:
            @hookimpl
            def gristmill_packers(self):
                return [PackerType(name="mine", description="d", factory=object)]

        def test_registers(gristmill_register, gristmill_manager):
            gristmill_register(Plugin(), name="mine")
            assert get_manager() is gristmill_manager is not ORIGINAL
            assert get_manager().get(PackerType, "mine")

        def test_gone_afterwards():
            assert get_manager() is ORIGINAL
            assert "mine" not in get_manager().components(PackerType)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
