"""Finding a tokenizer for a spec, and reloading the copy a dataset stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gristmill.components import Tokenizer, TokenizerType
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
    return manager.tokenizer(spec)  # raises the "no tokenizer named …" error with the choices


def load_saved(directory: Path, manifest: dict[str, Any], manager: PluginManager) -> Tokenizer:
    """The tokenizer stored in a dataset directory."""
    entry = manifest["tokenizer"]
    return manager.tokenizer(entry["name"]).load(directory / TOKENIZER_DIR, entry["config"])
