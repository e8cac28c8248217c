"""The ``ids`` tokenizer: a vocabulary of token ids with no text, for records that hold ids.

``ids:VOCAB`` (``ids:50257``) says how many ids there are, and so which ids a record may hold
and how wide the shards' ids are (uint16 up to 65,536, else uint32); the options
``bos_id``/``eos_id``/``pad_id`` say which ids are special, for the manifest, for truncation
(a final EOS is kept) and for decoding. It encodes no text: records with text need a tokenizer
that reads text. It adds no special token either; pre-tokenized records never get one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import DataError, OptionError
from gristmill.plugin.arguments import check_int

PREFIX = "ids:"
MAX_VOCAB = 1 << 32  # the largest vocabulary a shard's uint32 ids hold
CONFIG_FILE = "ids.json"
SPECIALS = ("bos_id", "eos_id", "pad_id")


class IdsTokenizer:
    add_bos = add_eos = False  # it never adds a token: the records hold the documents

    def __init__(
        self,
        vocab_size: int,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ):
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    def encode_batch(
        self, texts: Sequence[str], *, offsets: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        raise DataError(
            f"the tokenizer {PREFIX}{self.vocab_size} knows token ids, not text: this record "
            "holds text; name a tokenizer that reads text and holds the other records' ids "
            "(--tokenizer byte, hf:NAME, PATH/tokenizer.json), or give every record as input_ids"
        )

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The ids as decimal numbers, the special ones by name (``<|eos|>``)."""
        names = {
            getattr(self, name): f"<|{name.removesuffix('_id')}|>"
            for name in SPECIALS
            if getattr(self, name) is not None
        }
        return " ".join(names.get(i, str(i)) for i in np.asarray(ids, dtype=np.int64).tolist())

    def save(self, directory: Path) -> dict[str, Any]:
        config = {"vocab_size": self.vocab_size, **self._specials(), "file": CONFIG_FILE}
        text = json.dumps({"type": "ids", **config}, indent=2) + "\n"
        (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
        return config

    def _specials(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in SPECIALS}

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        bos_id: Any = None,
        eos_id: Any = None,
        pad_id: Any = None,
        **context: Any,
    ) -> IdsTokenizer:
        size = spec.removeprefix(PREFIX) if spec.startswith(PREFIX) else ""
        try:
            vocab_size = int(size)
        except ValueError:
            vocab_size = 0
        if not 1 <= vocab_size <= MAX_VOCAB:
            raise OptionError(
                f"tokenizer {spec!r}: write ids:VOCAB, VOCAB the number of token ids (1 to "
                f"{MAX_VOCAB:,}), e.g. ids:50257"
            )
        specials = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
        for name, value in specials.items():
            if value is not None and check_int(name, value, at_least=0) >= vocab_size:
                raise OptionError(f"{name} {value} is not below the vocabulary size {vocab_size}")
        return cls(vocab_size, **specials)

    @classmethod
    def load(cls, directory: Path, config: Mapping[str, Any], **context: Any) -> IdsTokenizer:
        specials = {name: config[name] for name in SPECIALS}
        return cls(int(config["vocab_size"]), **specials)
