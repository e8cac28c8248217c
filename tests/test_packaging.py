"""The first-party plugins as packaged: every package under ``plugins/src/<kind>/`` is in the
wheel, has one entry point named after what it provides, is first-party to ruff and is under the
import contract. pyproject.toml, .importlinter and tox.ini stay plain declarative lists that
every tool reads as it is; this module checks them against the folders and says what to add."""

from __future__ import annotations

import configparser
import warnings
from pathlib import Path

import pytest

from gristmill.plugin.components import KINDS
from gristmill.plugin.manager import PluginManager
from gristmill.plugin.renamed import RENAMED

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins" / "src"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
# A plugin's package lies in the folder of its main component's kind.
FOLDERS = {
    "sources": "sources",
    "fields": "field_mappers",
    "tokenizers": "tokenizers",
    "shards": "shard_formats",
    "packers": "packers",
    "samplers": "samplers",
    "executors": "executors",
}


def _packages() -> dict[str, str]:
    """Every first-party plugin package: its import name, and the folder of its kind."""
    return {path.name: path.parent.name for path in PLUGINS.glob("*/gristmill_*")}


def _entry_points() -> dict[str, str]:
    """The ``gristmill`` entry points: plugin name -> module."""
    return PYPROJECT["project"]["entry-points"]["gristmill"]


def _ini(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / name, encoding="utf-8")
    return parser


def _differences(what: str, listed: set[str], wanted: set[str]) -> list[str]:
    problems = []
    if wanted - listed:
        problems.append(f"add to {what}: {', '.join(sorted(wanted - listed))}")
    if listed - wanted:
        problems.append(f"remove from {what}: {', '.join(sorted(listed - wanted))}")
    return problems


def test_plugin_packages_lie_in_a_folder_of_their_kind():
    assert set(FOLDERS.values()) <= set(KINDS)
    folders = {path.name for path in PLUGINS.iterdir() if path.is_dir()}
    assert folders == set(FOLDERS), f"plugins/src/ holds one folder per kind: {sorted(FOLDERS)}"
    strays = [
        str(path.relative_to(ROOT))
        for path in PLUGINS.glob("*/*")
        if not (path.name.startswith("gristmill_") and (path / "__init__.py").is_file())
    ]
    assert not strays, f"not a plugin package (gristmill_NAME/__init__.py): {strays}"
    empty = [folder for folder in FOLDERS if not any((PLUGINS / folder).glob("gristmill_*"))]
    assert not empty, f"folders with no plugin: {empty}"


def test_the_wheel_holds_the_core_and_every_plugin_package():
    listed = set(PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    wanted = {"core/src/gristmill"}
    wanted |= {f"plugins/src/{folder}/{name}" for name, folder in _packages().items()}
    problems = _differences("[tool.hatch.build.targets.wheel] packages", listed, wanted)
    assert not problems, "; ".join(problems)


def test_each_plugin_package_has_exactly_one_entry_point():
    modules = [value.partition(":")[0] for value in _entry_points().values()]
    twice = sorted({m for m in modules if modules.count(m) > 1})
    assert not twice, f"one entry point a package, in [project.entry-points.gristmill]: {twice}"
    problems = _differences(
        "[project.entry-points.gristmill] (NAME-OF-ITS-MAIN-COMPONENT = MODULE)",
        set(modules),
        set(_packages()),
    )
    assert not problems, "; ".join(problems)


def test_a_plugin_is_named_after_its_main_component_or_its_family():
    manager = PluginManager(environ={})
    assert not manager.failures(), [info.error for info in manager.failures()]
    packages = _packages()
    for name, value in _entry_points().items():
        folder = packages[value.partition(":")[0]]
        assert name in manager.plugins, f"plugin {name!r} is not installed: pip install -e . again"
        provided = manager.plugins[name].components.get(FOLDERS[folder])
        assert provided, f"{value} provides no {FOLDERS[folder]}: move it to its main kind's folder"
        # A family of peers (the field mappers) is named after its folder; anything else after
        # the first component it registers.
        assert name in (provided[0], folder), (
            f"plugin {name!r} ({value}) provides {provided}: name it {provided[0]!r} in "
            "[project.entry-points.gristmill], and add its old name to gristmill.plugin.renamed"
        )


def test_ruff_knows_every_plugin_package_as_first_party():
    listed = set(PYPROJECT["tool"]["ruff"]["lint"]["isort"]["known-first-party"])
    wanted = {"gristmill", "tests", *_packages()}
    problems = _differences("[tool.ruff.lint.isort] known-first-party", listed, wanted)
    assert not problems, "; ".join(problems)


def test_the_import_contract_covers_every_plugin_package():
    config = _ini(".importlinter")
    roots = set(config["importlinter"]["root_packages"].split())
    problems = _differences(".importlinter root_packages", roots, {"gristmill", *_packages()})
    sources = set(config["importlinter:contract:plugins"]["source_modules"].split())
    problems += _differences(
        ".importlinter [importlinter:contract:plugins] source_modules", sources, set(_packages())
    )
    assert not problems, "; ".join(problems)


def test_the_lint_env_finds_every_plugin_folder():
    set_env = _ini("tox.ini")["testenv:lint"]["set_env"]
    path = next(line for line in set_env.splitlines() if line.strip().startswith("PYTHONPATH"))
    missing = [f for f in FOLDERS if f"{{tox_root}}{{/}}plugins{{/}}src{{/}}{f}" not in path]
    assert not missing, f"add to tox.ini's [testenv:lint] PYTHONPATH the folders {missing}"


def test_old_plugin_names_still_block_and_allow_with_a_warning(caplog):
    with pytest.warns(DeprecationWarning, match="'none-packer' is now named 'none'"):
        manager = PluginManager(environ={"GRISTMILL_DISABLE_PLUGINS": "none-packer"})
    assert manager.plugins["none"].status == "blocked"
    assert manager.plugins["random"].status == "ok"
    with pytest.warns(DeprecationWarning, match="'random-sampler' is now named 'random'"):
        manager = PluginManager(environ={"GRISTMILL_PLUGINS": "random-sampler; jsonl"})
    loaded = {name for name, info in manager.plugins.items() if info.status == "ok"}
    assert loaded == {"random", "jsonl"}
    assert "names no installed plugin" not in caplog.text


def test_the_current_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = PluginManager(environ={"GRISTMILL_DISABLE_PLUGINS": ",".join(RENAMED.values())})
    assert {manager.plugins[name].status for name in RENAMED.values()} == {"blocked"}
    assert not set(RENAMED) & set(_entry_points()), "an old name is in use again"
