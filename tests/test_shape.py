"""The code's shape stays readable: short functions, few parameters, small folders.

A function over 60 lines must be a measured hot path that says so on the line of its ``def``
(``# long: hot path, ...`` with the reason), three at most; more than 8 parameters are for the
public entry points alone (``gristmill.__all__``, ``gristmill.torch.__all__``), whose keyword
signatures users call.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = (ROOT / "core" / "src", ROOT / "plugins" / "src")
MAX_LINES, MAX_PARAMETERS, MAX_MODULES, MAX_HOT_PATHS = 60, 8, 15, 3
HOT_PATH = "# long: hot path"
# The public classes of gristmill.torch: their __init__ is their signature.
PUBLIC_INITS = {"DataLoader", "StreamLoader", "StreamDataset", "Collator"}


def _functions():
    """Every function: (path, node, the file's lines, the class it is a method of, or None)."""
    for tree in TREES:
        for path in sorted(tree.rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            module = ast.parse(source)
            owners = {
                id(item): node.name
                for node in ast.walk(module)
                if isinstance(node, ast.ClassDef)
                for item in node.body
            }
            for node in ast.walk(module):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT), node, source.splitlines(), owners.get(id(node))


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_functions_read_at_once():
    long, hot = [], []
    for path, node, lines, _ in _functions():
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_LINES:
            continue
        if HOT_PATH in lines[node.lineno - 1]:
            hot.append(f"{path}:{node.lineno} {node.name}")
        else:
            long.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_LINES} lines: {long}"
    assert len(hot) <= MAX_HOT_PATHS, f"more than {MAX_HOT_PATHS} long hot paths: {hot}"


def _public_names(package: Path) -> set[str]:
    """The names a package's ``__init__.py`` lists in ``__all__``, read without importing it
    (``gristmill.torch`` needs torch, which the minimal test envs lack)."""
    module = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    for node in module.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return set(ast.literal_eval(node.value))
    raise AssertionError(f"{package}: no __all__")


def test_only_public_entry_points_take_many_parameters():
    core = ROOT / "core" / "src" / "gristmill"
    public = _public_names(core) | _public_names(core / "torch") | PUBLIC_INITS
    crowded = []
    for path, node, _, owner in _functions():
        if len(_parameters(node)) <= MAX_PARAMETERS:
            continue
        name = owner if node.name == "__init__" else node.name
        if name not in public:
            crowded.append(f"{path}:{node.lineno} {node.name} ({len(_parameters(node))})")
    assert not crowded, f"functions with more than {MAX_PARAMETERS} parameters: {crowded}"


def test_no_folder_of_the_core_holds_more_than_fifteen_modules():
    core = ROOT / "core" / "src" / "gristmill"
    for folder in [core, *(p for p in core.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        modules = [p for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")]
        assert len(modules) <= MAX_MODULES, f"{folder.relative_to(ROOT)}: {len(modules)} modules"
