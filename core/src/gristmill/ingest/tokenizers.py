"""Finding a tokenizer for a spec, the one a run's sources say their ids belong to, and
reloading the copy a dataset stores."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from gristmill.errors import DataError
from gristmill.plugin.components import SourceType, TokenizerType
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


def declared_tokenizer(
    specs: Sequence[Any], source_options: Mapping[str, Any] | None, manager: PluginManager
) -> str | None:
    """The tokenizer that the sources among ``specs`` say their token ids belong to (a
    ``synthetic:`` source's ``ids:VOCAB``, see ``SourceType.tokenizer``), or ``None`` when none
    says. Sources that name different ones raise :class:`~gristmill.errors.DataError`."""
    declared: dict[str, str] = {}
    for given in specs:
        if not isinstance(given, (str, os.PathLike)):
            continue  # records given in memory name no tokenizer
        spec = os.fspath(given)
        claimed = manager.claim(SourceType, spec, by="prefixes")
        if claimed is not None and claimed.tokenizer is not None:
            declared[spec] = claimed.tokenizer(spec, **claimed.check_options(source_options))
    names = sorted(set(declared.values()))
    if len(names) > 1:
        says = ", ".join(f"{spec} {name!r}" for spec, name in declared.items())
        raise DataError(
            f"the sources of this run hold the ids of different tokenizers ({says}): name one "
            "whose vocabulary holds them all (--tokenizer)"
        )
    return names[0] if names else None
