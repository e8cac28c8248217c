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
from gristmill_hf_tokenizers.engines import Checked

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
        checked: Checked | None = None,
    ):
        self.path = path
        super().__init__(spec, backend, specials, engine, self._open if reopen else None, checked)

    def _open(self) -> Any:
        return open_file(self.spec, self.path, NOT_A_FILE)

    def _to_str(self) -> str:
        # The file itself, not the library's serialisation of it: a copy of this tokenizer
        # (a prepare worker's) then builds the fast engine that was checked, without the library.
        return self.path.read_text(encoding="utf-8")

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
        cls,
        directory: Path,
        config: Mapping[str, Any],
        engine: str = "auto",
        checked: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JSONTokenizer:
        """The dataset's copy; ``checked`` (a tokenizer's ``handoff()``): its fast engine agreed
        with the reference already, which is then opened only when a document needs it."""
        path = directory / config.get("file", FILE)
        trusted = Checked.from_mapping(checked) if engine != "hf" else None
        backend = None if trusted is not None else open_file(str(path), path, NOT_A_FILE)
        # The dataset's copy, which stays: the library's tokenizer can be let go and reopened.
        specials = Specials.from_config(config)
        return cls(str(path), path, backend, specials, engine, reopen=True, checked=trusted)

    def save(self, directory: Path) -> dict[str, Any]:
        # The user's file as it is: byte for byte what they tokenized with.
        shutil.copyfile(self.path, directory / FILE)
        return {"file": FILE, **self.specials.as_config()}

    def fingerprint(self) -> str:
        """Changes whenever the ids or the specials could."""
        return digest(self.path.read_bytes(), repr(self.specials.as_config()))
