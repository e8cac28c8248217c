"""Every rank imports gristmill and every plugin: that must not drag in heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = [
    "pyarrow",
    "datasets",
    "transformers",
    "tokenizers",
    "gigatoken",
    "awkward",
    "torch",
    "ray",
    "pandas",
]

PROBE = """
import sys

attempted = []


class Recorder:
    # Records every attempt to import a heavy library, even one guarded by try/except.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {heavy!r}:
            attempted.append(name)
        return None


sys.meta_path.insert(0, Recorder())
import gristmill
from gristmill.cli import main
from gristmill.plugin.manager import get_manager
code = main(["plugins", "--all"])
assert code == 0, code
assert all(p.status == "ok" for p in get_manager().plugins.values())
print("HEAVY:", ",".join(sorted(set(attempted))))
"""


def test_import_and_plugin_listing_import_no_heavy_library():
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY:", result.stdout


CORE_SIDES = ("gristmill.ingest", "gristmill.store", "gristmill.serve", "gristmill.torch")
PLUGIN_PROBE = """
import importlib, json, sys
from importlib.metadata import entry_points

loaded = dict()
for entry in entry_points(group="gristmill"):
    before = set(sys.modules)
    importlib.import_module(entry.value.partition(":")[0])
    loaded[entry.name] = sorted(
        m for m in set(sys.modules) - before if m.startswith({sides!r})
    )
print(json.dumps(loaded))
"""


def test_importing_a_plugin_loads_neither_the_read_nor_the_write_side():
    """A plugin's ``from gristmill import hookimpl`` and its kit imports stay cheap: listing
    plugins, or a worker that loads one, does not pay for prepare's or the loader's modules."""
    result = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE.format(sides=CORE_SIDES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert len(loaded) >= 18
    assert {name: mods for name, mods in loaded.items() if mods} == {}
