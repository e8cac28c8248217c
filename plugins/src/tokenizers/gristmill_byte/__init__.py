"""The built-in ``byte`` tokenizer: UTF-8 bytes as ids 0–255, plus three special tokens.

Needs no download and round-trips any text exactly, which makes it the tokenizer of the built-in
samples and of tests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import OptionError
from gristmill.plugin.components import TokenizerType

EOS, PAD, BOS = 256, 257, 258
SPECIALS = {EOS: "<|endoftext|>", PAD: "<|pad|>", BOS: "<|bos|>"}
CONFIG_FILE = "byte.json"


class ByteTokenizer:
    vocab_size = 259
    bos_id, eos_id, pad_id = BOS, EOS, PAD

    def __init__(self, *, add_bos: bool = False, add_eos: bool = True):
        self.add_bos, self.add_eos = add_bos, add_eos

    def encode_batch(
        self, texts: Sequence[str], *, offsets: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        # uint16 so that special ids can be appended to the same array.
        ids = [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.uint16) for t in texts]
        return ids, [_byte_offsets(t) for t in texts] if offsets else None

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        cuts = np.flatnonzero(ids >= 256)
        out, start = [], 0
        for cut in cuts:
            out.append(bytes(ids[start:cut].astype(np.uint8)).decode("utf-8", errors="replace"))
            out.append(SPECIALS.get(int(ids[cut]), f"<|unknown:{int(ids[cut])}|>"))
            start = int(cut) + 1
        out.append(bytes(ids[start:].astype(np.uint8)).decode("utf-8", errors="replace"))
        return "".join(out)

    def save(self, directory: Path) -> dict[str, Any]:
        config = {"add_bos": self.add_bos, "add_eos": self.add_eos, "file": CONFIG_FILE}
        vocab = {"type": "byte", "vocab_size": self.vocab_size, "specials": SPECIALS, **config}
        (directory / CONFIG_FILE).write_text(json.dumps(vocab, indent=2) + "\n", encoding="utf-8")
        return config

    @classmethod
    def from_spec(
        cls, spec: str, *, add_bos: bool = False, add_eos: bool = True, **context: Any
    ) -> ByteTokenizer:
        for name, value in (("add_bos", add_bos), ("add_eos", add_eos)):
            if not isinstance(value, bool):
                raise OptionError(f"the byte tokenizer's {name} is true or false, got {value!r}")
        return cls(add_bos=add_bos, add_eos=add_eos)

    @classmethod
    def load(cls, directory: Path, config: Mapping[str, Any], **options: Any) -> ByteTokenizer:
        return cls(add_bos=bool(config["add_bos"]), add_eos=bool(config["add_eos"]))


def _byte_offsets(text: str) -> np.ndarray:
    """The character index each UTF-8 byte of ``text`` belongs to."""
    if text.isascii():
        return np.arange(len(text), dtype=np.int64)
    codepoints = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    width = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    return np.repeat(np.arange(len(codepoints), dtype=np.int64), width)


@hookimpl
def gristmill_tokenizers() -> list[TokenizerType]:
    return [
        TokenizerType(
            name="byte",
            description="UTF-8 bytes (ids 0-255) + <|endoftext|>, <|pad|>, <|bos|>; no download",
            factory=ByteTokenizer.from_spec,
            load=ByteTokenizer.load,
            options={
                "add_bos": "add <|bos|> before every document (default false)",
                "add_eos": "add <|endoftext|> after every document (default true)",
            },
        )
    ]
