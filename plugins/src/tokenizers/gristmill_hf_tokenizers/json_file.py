"""``PATH/tokenizer.json``: a ``tokenizers`` JSON file, used without transformers.

A bare tokenizer.json declares no BOS/EOS, so they are found by what its post-processor adds and by
common names (see :mod:`gristmill_hf_tokenizers.common`). It has no chat template either: chat
examples use gristmill's built-in one (load the folder with ``hf:`` to use a template).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gristmill_hf_tokenizers.backend import BackendTokenizer, open_file, specials_of
from gristmill_hf_tokenizers.common import Specials, TokenizerLoadError, describe, digest

FILE = "tokenizer.json"
NOT_A_FILE = "not a tokenizers JSON file"


class JSONTokenizer(BackendTokenizer):
    """A ``tokenizers.Tokenizer`` loaded from a JSON file."""

    def __init__(
        self,
        spec: str,
        path: Path,
        backend: Any,
        specials: Specials,
        engine: str = "auto",
        reopen: bool = False,
    ):
        self.path = path
        super().__init__(spec, backend, specials, engine, self._open if reopen else None)

    def _open(self) -> Any:
        return open_file(self.spec, self.path, NOT_A_FILE)

    @classmethod
    def from_spec(cls, spec: str, engine: str = "auto", **options: Any) -> JSONTokenizer:
        """The tokenizer at ``spec``; ``engine`` is ``auto``, ``hf`` or ``gigatoken`` (see
        :mod:`gristmill_hf_tokenizers.engines`). Other context keywords are ignored."""
        path = Path(spec).expanduser()
        if not path.is_file():
            raise TokenizerLoadError(f"{spec!r}: no such file")
        backend = open_file(spec, path, NOT_A_FILE)
        specials = specials_of(spec, backend)
        tok = cls(spec, path, backend, specials, engine)
        describe(spec, specials, backend.id_to_token)
        return tok

    @classmethod
    def load(
        cls, directory: Path, config: Mapping[str, Any], engine: str = "auto", **options: Any
    ) -> JSONTokenizer:
        path = directory / config.get("file", FILE)
        backend = open_file(str(path), path, NOT_A_FILE)
        # The dataset's copy, which stays: the library's tokenizer can be let go and reopened.
        return cls(str(path), path, backend, Specials.from_config(config), engine, reopen=True)

    def save(self, directory: Path) -> dict[str, Any]:
        # The user's file as it is: byte for byte what they tokenized with.
        shutil.copyfile(self.path, directory / FILE)
        return {"file": FILE, **self.specials.as_config()}

    def fingerprint(self) -> str:
        """Changes whenever the ids or the specials could."""
        return digest(self.path.read_bytes(), repr(self.specials.as_config()))
