"""Finding a tokenizer for a spec, and reloading the copy a dataset stores."""

from __future__ import annotations

import os

from gristmill.plugin.components import TokenizerType
from gristmill.plugin.manager import PluginManager


def resolve_tokenizer(spec: str, manager: PluginManager) -> TokenizerType:
    """The tokenizer family for ``spec``: by exact name, then prefix (``hf:``), then suffix."""
    families = manager.components(TokenizerType)
    if spec in families:
        return manager.get(TokenizerType, spec)  # raises when two plugins register the name
    for by in ("prefixes", "suffixes"):
        claimed = manager.claim(TokenizerType, spec, by=by)
        if claimed is not None:
            return claimed
    if os.path.isfile(spec):  # a file no tokenizer claims by its name: say which names count
        claims = sorted({s for rec in families.values() for s in rec.suffixes})
        message = f"no tokenizer reads the file {spec!r}"
        if claims:
            message += f"; tokenizer files are recognised by a name ending in {', '.join(claims)}"
        raise manager.unknown_error(TokenizerType, spec, message)
    return manager.get(TokenizerType, spec)  # raises "no tokenizer named …" with the choices
