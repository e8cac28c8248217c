"""Test a contrib plugin the way its users get it: as a built wheel installed next to gristmill.

``python contrib/test_wheel.py contrib-NAME [PYTEST ARGS]`` (tox's ``contrib-NAME`` env runs it):

1. ``gristmill plugins --json`` must not list the plugin's entry points yet (a copy left by an
   earlier run is uninstalled first);
2. build ``contrib/gristmill-NAME`` into a wheel and install that wheel (its dependencies too,
   under the constraints tox sets);
3. ``gristmill plugins --json`` must now list every entry point, loaded without error, from
   the ``gristmill-NAME`` distribution;
4. run the plugin's own tests against the installed copy (its ``src/`` is never on the path).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - tox runs this on 3.11
    import tomli as tomllib

CONTRIB = Path(__file__).resolve().parent


def run(*args: str) -> str:
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout


def listed(plugins: list[str]) -> dict[str, dict]:
    """The entries of ``gristmill plugins --json`` for these plugin names."""
    report = json.loads(run("gristmill", "plugins", "--json"))
    return {p["name"]: p for p in report["plugins"] if p["name"] in plugins}


def main(env_name: str, pytest_args: list[str]) -> int:
    name = env_name.removeprefix("contrib-")
    project = CONTRIB / f"gristmill-{name}"
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    plugins = list(meta["entry-points"]["gristmill"])
    if not plugins:
        sys.exit(f"{project}: no entry points in the 'gristmill' group")

    # A rerun of the env finds the wheel of the last run: remove it, so that discovery is tested.
    run(sys.executable, "-m", "pip", "uninstall", "-q", "-y", meta["name"])
    early = listed(plugins)
    if early:
        sys.exit(f"found before the wheel was installed: {sorted(early)}")

    with tempfile.TemporaryDirectory() as wheels:
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, str(project))
        (wheel,) = Path(wheels).glob("*.whl")
        run(sys.executable, "-m", "pip", "install", "-q", str(wheel))

    found = listed(plugins)
    for plugin in plugins:
        entry = found.get(plugin)
        if entry is None:
            sys.exit(f"{plugin}: not listed by `gristmill plugins` after installing the wheel")
        if entry["status"] != "ok" or entry["distribution"] != meta["name"]:
            sys.exit(f"{plugin}: listed as {entry}")
        print(
            f"found {plugin} from {entry['distribution']} {entry['version']}: {entry['components']}"
        )

    # From the project directory, so that its own pytest configuration applies; the package
    # under test is imported from the installed wheel (src/ is not on sys.path).
    tests = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests", *pytest_args]
    return subprocess.run(tests, cwd=project).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
