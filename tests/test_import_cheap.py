"""Every rank imports gristmill and every plugin: that must not drag in heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["pyarrow", "datasets", "transformers", "tokenizers", "torch", "ray", "pandas"]

PROBE = """
import sys
import gristmill
from gristmill.cli import main
from gristmill.plugins import get_manager
code = main(["plugins", "--all"])
assert code == 0, code
assert all(p.status == "ok" for p in get_manager().plugins.values())
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY:", ",".join(heavy))
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
