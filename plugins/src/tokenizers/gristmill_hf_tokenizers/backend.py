"""What ``hf:`` and ``tokenizer.json`` tokenizers share: a ``tokenizers.Tokenizer`` that encodes.

Both hold the library's ``Tokenizer`` (``hf:`` reads it from the folder as transformers would,
see :mod:`gristmill_hf_tokenizers.pretrained`); it is the reference engine, and the fast engine
is checked against it (see :mod:`gristmill_hf_tokenizers.engines`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import first_line
from gristmill.plugin.workers import trim_memory
from gristmill_hf_tokenizers.common import (
    PROBE_TEXT,
    Specials,
    TokenizerLoadError,
    detect_specials,
    not_unicode_as_value_error,
    require,
    to_arrays,
    vocab_size,
)
from gristmill_hf_tokenizers.engines import Checked, EngineTokenizer


class BackendTokenizer(EngineTokenizer):
    """A ``tokenizers.Tokenizer`` (``backend``) behind gristmill's Tokenizer protocol.

    With ``reopen`` (a function that opens the same ``backend`` again), the library's tokenizer
    is let go once the fast engine has agreed with it: a prepare worker that encodes with the
    fast engine keeps one tokenizer in memory, not two. It is opened again when it is needed
    after all (a document the fast engine leaves to it, ``decode``), and then kept: each
    opening parses the tokenizer's JSON and leaves some of the heap behind. With ``checked``
    too (the fast engine agreed where this tokenizer was copied from), ``backend`` may be None:
    it is opened only when it is needed.
    """

    def __init__(
        self,
        spec: str,
        backend: Any,
        specials: Specials,
        engine: str = "auto",
        reopen: Callable[[], Any] | None = None,
        checked: Checked | None = None,
    ):
        self._backend: Any = backend
        self._reopen = reopen
        self.reopened = 0
        if backend is None:
            assert checked is not None and reopen is not None, "opened when needed, or now"
            size = checked.vocab_size
        else:
            vocab = backend.get_vocab(with_added_tokens=True)
            size = vocab_size(vocab, backend.get_vocab_size(with_added_tokens=True))
        release = self._release if reopen is not None else None
        super().__init__(spec, specials, size, engine, self._to_str, release, checked)

    @property
    def backend(self) -> Any:
        if self._backend is None:
            assert self._reopen is not None, "only a tokenizer that can reopen it lets it go"
            self._backend = self._reopen()
            self.reopened += 1
        return self._backend

    def _release(self) -> None:
        """After each batch, once the fast engine has agreed with the reference."""
        if self._backend is not None and not self.reopened:
            self._backend = None
            trim_memory()

    def _to_str(self) -> str:
        return str(self.backend.to_str())

    def _encode_reference(
        self, texts: list[str], offsets: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        backend = self.backend
        with not_unicode_as_value_error():
            if not offsets:
                # The faster call that skips computing offsets (tokenizers >= 0.20).
                encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
                encodings = encode(texts, add_special_tokens=False)
                return to_arrays([e.ids for e in encodings], None)
            encodings = backend.encode_batch(texts, add_special_tokens=False)
        return to_arrays([e.ids for e in encodings], [e.offsets for e in encodings])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        text = self.backend.decode(np.asarray(ids).tolist(), skip_special_tokens=False)
        return str(text)


def specials_of(spec: str, backend: Any, **declared: int | None) -> Specials:
    """The BOS/EOS policy (:func:`~gristmill_hf_tokenizers.common.detect_specials`) from a probe
    encoded with and without the tokenizer's default special tokens; ``declared``: the ``bos``,
    ``eos`` and ``pad`` ids its configs name."""
    plain, full = (backend.encode(PROBE_TEXT, add_special_tokens=f).ids for f in (False, True))
    return detect_specials(spec, plain, full, backend.get_vocab(with_added_tokens=True), **declared)


def open_file(spec: str, path: Path, problem: str) -> Any:
    """The ``tokenizers.Tokenizer`` saved at ``path``, never cutting or padding a document; a
    file it cannot parse is a :class:`TokenizerLoadError` that starts with ``problem``."""
    tokenizers = require("tokenizers", spec)
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the library's own parse errors: one clear line
        raise TokenizerLoadError(f"{spec!r}: {problem} ({first_line(exc)})") from None
    # A saved file can carry truncation or padding settings; a document is never cut or padded.
    backend.no_truncation()
    backend.no_padding()
    return backend
