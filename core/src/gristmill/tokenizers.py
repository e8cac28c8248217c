"""Finding a tokenizer for a spec, and reloading the copy a dataset stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gristmill.components import Tokenizer, TokenizerType
from gristmill.manifest import check_generation, file_entry
from gristmill.plugins import PluginManager

TOKENIZER_DIR = "tokenizer"


def resolve_tokenizer(spec: str, manager: PluginManager) -> TokenizerType:
    """The tokenizer family for ``spec``: by exact name, then prefix (``hf:``), then suffix."""
    if spec in manager.components("tokenizers"):
        return manager.tokenizer(spec)
    for by in ("prefixes", "suffixes"):
        claimed = manager.claim("tokenizers", spec, by=by)
        if isinstance(claimed, TokenizerType):
            return claimed
    if os.path.isfile(spec):  # a file no tokenizer claims by its name: say which names count
        claims = sorted(
            {s for rec in manager.components("tokenizers").values() for s in rec.suffixes}  # type: ignore[attr-defined]
        )
        message = f"no tokenizer reads the file {spec!r}"
        if claims:
            message += f"; tokenizer files are recognised by a name ending in {', '.join(claims)}"
        raise manager.unknown_error("tokenizers", spec, message)
    return manager.tokenizer(spec)  # raises the "no tokenizer named …" error with the choices


def saved_files(directory: Path) -> list[dict[str, Any]]:
    """The manifest's entries for every file the tokenizer saved in the dataset ``directory``."""
    folder = directory / TOKENIZER_DIR
    return [
        file_entry(directory, path.relative_to(directory).as_posix())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def load_saved(directory: Path, manifest: dict[str, Any], manager: PluginManager) -> Tokenizer:
    """The tokenizer stored in a dataset directory, refused if the dataset was prepared again
    since ``manifest`` was read (its files may be another tokenizer's)."""
    entry = manifest["tokenizer"]
    tokenizer = manager.tokenizer(entry["name"]).load(directory / TOKENIZER_DIR, entry["config"])
    check_generation(directory, manifest)
    return tokenizer
