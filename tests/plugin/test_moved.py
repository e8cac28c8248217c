"""Module paths of the flat layout keep working for one release, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from gristmill._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_gives_the_moved_module(old):
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('error')\n"
        f"try:\n    importlib.import_module({old!r})\n"
        "except DeprecationWarning as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        f"{old} moved to {MOVED[old]}; the old name goes away in the next release"
    )
    with pytest.warns(DeprecationWarning):
        sys.modules.pop(old, None)
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_an_old_path_named_like_a_function_leaves_the_function_in_place():
    """``import gristmill.stream`` (the old module) must not hide ``gristmill.stream()``."""
    code = (
        "import warnings\nwarnings.simplefilter('ignore')\n"
        "import gristmill.stream, gristmill.export, gristmill.mixture\n"
        "from gristmill.stream import Stream\n"
        "print(callable(gristmill.stream), callable(gristmill.export), callable(gristmill.mixture))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]
