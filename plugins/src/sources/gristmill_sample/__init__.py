"""The ``sample:`` source: real text that ships with every Python, so gristmill runs offline.

- ``sample:stdlib``: each module of the installed standard library as one text document
  (``{"text": source, "path": "json/decoder.py"}``); empty files are skipped.
- ``sample:stdlib-qa``: prompt/completion pairs, a function's signature → its docstring.

Test suites and private packages (``test``, ``tests``, ``idle_test``, ``site-packages``) are left
out. The order is the sorted module path, so a given Python installation always yields the same
records.
"""

from __future__ import annotations

import ast
import itertools
import os
import sys
import sysconfig
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from gristmill import hookimpl
from gristmill.errors import DataError
from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import SourceType, Where

SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)


@cache
def stdlib_modules() -> tuple[Path, tuple[Path, ...]]:
    """The standard library's root and its module files, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        # Prune while walking: site-packages can be far larger than the standard library.
        subdirs[:] = [d for d in subdirs if d not in SKIPPED_DIRS]
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return root, tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


class StdlibSource:
    """``sample:stdlib``: module sources as text; splits by module file."""

    def __init__(self, spec: str, *, files: tuple[Path, ...] | None = None, **options: Any):
        self.spec = spec
        self.files = stdlib_modules()[1] if files is None else files

    def split(self, pieces: int) -> list[StdlibSource]:
        n = max(1, min(pieces, len(self.files)))
        bounds = [len(self.files) * k // n for k in range(n + 1)]
        return [type(self)(self.spec, files=self.files[a:b]) for a, b in itertools.pairwise(bounds)]

    def nbytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        root = stdlib_modules()[0]
        for path in self.files:
            text = path.read_text(encoding="utf-8")
            if not text.strip():  # empty package markers are not documents
                continue
            rel = path.relative_to(root).as_posix()
            yield {"text": text, "path": rel}, Where(f"{self.spec}/{rel}")

    def fingerprint(self) -> str:
        root = stdlib_modules()[0]
        stats = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in self.files]
        return fingerprint([self.spec, sys.version, str(root), stats])


class StdlibQASource(StdlibSource):
    """``sample:stdlib-qa``: ``# module.qualname`` + signature → docstring."""

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        root = stdlib_modules()[0]
        for path in self.files:
            rel = path.relative_to(root).as_posix()
            module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            tree = ast.parse(path.read_bytes(), filename=str(path))
            for qualname, node in _functions(tree.body, ""):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                prompt = f"# {module}.{qualname}\n{_signature(node)}"
                yield (
                    {"prompt": prompt, "completion": doc},
                    Where(f"{self.spec}/{rel}", node.lineno),
                )


def _functions(
    body: list[ast.stmt], prefix: str
) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    head = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{head} {node.name}({ast.unparse(node.args)}){returns}:"


SAMPLES = {"sample:stdlib": StdlibSource, "sample:stdlib-qa": StdlibQASource}


def open_sample(spec: str, **options: Any) -> StdlibSource:
    if spec not in SAMPLES:
        raise DataError(f"unknown sample {spec!r}; built-in samples: {', '.join(SAMPLES)}")
    return SAMPLES[spec](spec)


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="sample",
            description="built-in real text, no download: sample:stdlib (module sources), "
            "sample:stdlib-qa (signature → docstring)",
            prefixes=("sample:",),
            factory=open_sample,
        )
    ]
