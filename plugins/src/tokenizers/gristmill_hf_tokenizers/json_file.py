"""``PATH/tokenizer.json``: a ``tokenizers`` JSON file, used without transformers.

A bare tokenizer.json declares no BOS/EOS, so they are found by what its post-processor adds and by
common names (see :mod:`gristmill_hf_tokenizers.common`). It has no chat template either: chat
examples use gristmill's built-in one (load the folder with ``hf:`` to use a template).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import first_line
from gristmill_hf_tokenizers.common import (
    PROBE_TEXT,
    Specials,
    TokenizerLoadError,
    describe,
    detect_specials,
    digest,
    not_unicode_as_value_error,
    require,
    to_arrays,
    vocab_size,
)
from gristmill_hf_tokenizers.engines import EngineTokenizer

FILE = "tokenizer.json"


class JSONTokenizer(EngineTokenizer):
    """A ``tokenizers.Tokenizer`` loaded from a JSON file."""

    def __init__(
        self, spec: str, path: Path, backend: Any, specials: Specials, engine: str = "auto"
    ):
        self.path, self.backend = path, backend
        vocab = backend.get_vocab(with_added_tokens=True)
        size = vocab_size(vocab, backend.get_vocab_size(with_added_tokens=True))
        # Without offsets, the faster call that skips computing them (tokenizers >= 0.20).
        self._encode_fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
        super().__init__(spec, specials, size, engine, backend.to_str)

    @classmethod
    def from_spec(cls, spec: str, engine: str = "auto", **options: Any) -> JSONTokenizer:
        """The tokenizer at ``spec``; ``engine`` is ``auto``, ``hf`` or ``gigatoken`` (see
        :mod:`gristmill_hf_tokenizers.engines`). Other context keywords are ignored."""
        path = Path(spec).expanduser()
        if not path.is_file():
            raise TokenizerLoadError(f"{spec!r}: no such file")
        backend = _open(spec, path)
        plain, full = (backend.encode(PROBE_TEXT, add_special_tokens=f).ids for f in (False, True))
        specials = detect_specials(spec, plain, full, backend.get_vocab(with_added_tokens=True))
        tok = cls(spec, path, backend, specials, engine)
        describe(spec, specials, backend.id_to_token)
        return tok

    @classmethod
    def load(
        cls, directory: Path, config: Mapping[str, Any], engine: str = "auto", **options: Any
    ) -> JSONTokenizer:
        path = directory / config.get("file", FILE)
        return cls(str(path), path, _open(str(path), path), Specials.from_config(config), engine)

    def save(self, directory: Path) -> dict[str, Any]:
        # The user's file as it is: byte for byte what they tokenized with.
        shutil.copyfile(self.path, directory / FILE)
        return {"file": FILE, **self.specials.as_config()}

    def _encode_reference(
        self, texts: list[str], offsets: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        with not_unicode_as_value_error():
            if not offsets:
                encodings = self._encode_fast(texts, add_special_tokens=False)
                return to_arrays([e.ids for e in encodings], None)
            encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        return to_arrays([e.ids for e in encodings], [e.offsets for e in encodings])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.backend.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def fingerprint(self) -> str:
        """Changes whenever the ids or the specials could."""
        return digest(self.path.read_bytes(), repr(self.specials.as_config()))


def _open(spec: str, path: Path) -> Any:
    tokenizers = require("tokenizers", spec)
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the library's own parse errors: one clear line
        raise TokenizerLoadError(
            f"{spec!r}: not a tokenizers JSON file ({first_line(exc)})"
        ) from None
    # A saved file can carry truncation or padding settings; a document is never cut or padded.
    backend.no_truncation()
    backend.no_padding()
    return backend
