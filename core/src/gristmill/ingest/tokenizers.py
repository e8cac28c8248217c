"""Finding a tokenizer for a spec, and reloading the copy a dataset stores."""

from __future__ import annotations

import os

from gristmill.plugin.components import TokenizerType
from gristmill.plugin.manager import PluginManager


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
