"""``hf:NAME_OR_PATH``: a transformers fast tokenizer, from a local folder or the Hub."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gristmill.errors import DataError, MissingDependencyError, first_line
from gristmill.plugin.network import probe_url
from gristmill_hf_tokenizers.chat import Conversation, render_by_prefixes
from gristmill_hf_tokenizers.common import (
    PROBE_TEXT,
    Specials,
    TokenizerLoadError,
    describe,
    detect_specials,
    digest,
    log,
    not_unicode_as_value_error,
    require,
    to_arrays,
    vocab_size,
)
from gristmill_hf_tokenizers.engines import EngineTokenizer

PROBE_TIMEOUT = 5.0  # seconds: a clear "offline" beats the library's retries
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class HFTokenizer(EngineTokenizer):
    """A ``transformers`` fast tokenizer behind gristmill's Tokenizer protocol."""

    def __init__(self, spec: str, hf: Any, specials: Specials, engine: str = "auto"):
        self.hf = hf
        size = vocab_size(hf.get_vocab(), len(hf))
        super().__init__(spec, specials, size, engine, hf.backend_tokenizer.to_str)

    # --- creating and reloading ------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: str, engine: str = "auto", **options: Any) -> HFTokenizer:
        """The tokenizer ``spec`` names; ``engine`` is ``auto``, ``hf`` or ``gigatoken`` (see
        :mod:`gristmill_hf_tokenizers.engines`). Other context keywords are ignored."""
        name = spec.removeprefix("hf:")
        if not name:
            raise TokenizerLoadError(f"{spec!r}: name a tokenizer: hf:ORG/NAME or hf:FOLDER")
        hf = _load(spec, name)
        plain, with_specials = (
            hf(PROBE_TEXT, add_special_tokens=flag, verbose=False)["input_ids"]
            for flag in (False, True)
        )
        specials = detect_specials(
            spec,
            plain,
            with_specials,
            hf.get_vocab(),
            bos=hf.bos_token_id,
            eos=hf.eos_token_id,
            pad=hf.pad_token_id,
        )
        tok = cls.create(spec, hf, specials, engine)
        describe(spec, specials, hf.convert_ids_to_tokens)
        return tok

    @classmethod
    def create(cls, spec: str, hf: Any, specials: Specials, engine: str = "auto") -> HFTokenizer:
        """The tokenizer, able to render chat when ``hf`` has a chat template."""
        kind = HFChatTokenizer if getattr(hf, "chat_template", None) else cls
        return kind(spec, hf, specials, engine)

    @classmethod
    def load(
        cls, directory: Path, config: Mapping[str, Any], engine: str = "auto", **options: Any
    ) -> HFTokenizer:
        spec = f"hf:{directory}"
        hf = _from_pretrained(spec, require("transformers", spec), str(directory), True)
        return cls.create(spec, hf, Specials.from_config(config), engine)

    def save(self, directory: Path) -> dict[str, Any]:
        self.hf.save_pretrained(str(directory))
        return self.specials.as_config()

    # --- the protocol ------------------------------------------------------------------------------

    def _encode_reference(
        self, texts: list[str], offsets: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        if not texts:
            return [], [] if offsets else None
        with not_unicode_as_value_error():
            out = self.hf(
                texts,
                add_special_tokens=False,
                return_offsets_mapping=offsets,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,  # no "longer than model_max_length" warning: nothing is truncated
            )
        return to_arrays(out["input_ids"], out["offset_mapping"] if offsets else None)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.hf.decode(
            np.asarray(ids).tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def fingerprint(self) -> str:
        """Changes whenever the ids, the specials or the chat rendering could."""
        template = getattr(self.hf, "chat_template", None)
        return digest(
            self.hf.backend_tokenizer.to_str(), repr(template), repr(self.specials.as_config())
        )


class HFChatTokenizer(HFTokenizer):
    """A tokenizer with a chat template: chat examples are rendered with it."""

    def render_chat(
        self, messages: tuple[tuple[str, str], ...], *, train_on_prompt: bool = False
    ) -> tuple[str, tuple[tuple[int, int], ...]]:
        """The conversation as the template renders it, and its assistant turns' spans."""
        return render_by_prefixes(self._render, messages, train_on_prompt)

    def _render(self, conversation: Conversation, add_generation_prompt: bool) -> str:
        try:
            text = self.hf.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except ImportError:  # transformers renders templates with jinja2
            raise MissingDependencyError(
                f"{self.spec}: rendering its chat template needs jinja2: pip install jinja2"
            ) from None
        except Exception as exc:  # the template's own raise_exception(), or a Jinja error
            raise DataError(
                f"the tokenizer's chat template cannot render this conversation: "
                f"{type(exc).__name__}: {exc}",
                field="messages",
            ) from None
        if not isinstance(text, str):
            message = f"the chat template rendered {type(text).__name__}, not text"
            raise DataError(message, field="messages")
        return text


# --- finding the tokenizer -----------------------------------------------------------------------


def _load(spec: str, name: str) -> Any:
    transformers = require("transformers", spec)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _from_pretrained(spec, transformers, str(folder), True)
    if folder.is_file():
        raise TokenizerLoadError(
            f"{spec!r}: hf: takes a folder or a Hub id; for a tokenizers JSON file pass its path "
            "alone (--tokenizer PATH/tokenizer.json)"
        )
    repo, _, revision = name.partition("@")
    if name.startswith((".", "/", "~")) or not HUB_ID.match(repo):
        raise TokenizerLoadError(f"{spec!r}: no such folder: {folder}")
    from huggingface_hub import constants

    hub = {"revision": revision or None}
    if constants.HF_HUB_OFFLINE:
        try:
            return _from_pretrained(spec, transformers, repo, True, **hub)
        except TokenizerLoadError:
            raise TokenizerLoadError(
                f"{spec!r}: HF_HUB_OFFLINE is set and {repo} is not in the local Hugging Face "
                f"cache. {_LOCAL_FOLDER_HINT.format(repo=repo)}"
            ) from None
    try:
        probe_url(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
    except OSError as exc:
        try:  # a copy cached by an earlier run still works offline
            hf = _from_pretrained(spec, transformers, repo, True, **hub)
        except TokenizerLoadError:
            raise TokenizerLoadError(
                f"{spec!r}: cannot reach {constants.ENDPOINT} ({exc}); gristmill looks offline "
                f"and {repo} is not in the local Hugging Face cache. "
                f"{_LOCAL_FOLDER_HINT.format(repo=repo)}"
            ) from None
        log.warning(f"{spec}: cannot reach {constants.ENDPOINT}; using the cached copy")
        return hf
    return _from_pretrained(spec, transformers, repo, False, **hub)


_LOCAL_FOLDER_HINT = (
    "Save the tokenizer to a folder where there is network "
    "(`AutoTokenizer.from_pretrained('{repo}').save_pretrained('DIR')` or "
    "`hf download {repo} --local-dir DIR`) and pass --tokenizer hf:DIR"
)


def _from_pretrained(
    spec: str, transformers: Any, name: str, local_only: bool, **options: Any
) -> Any:
    try:
        hf = transformers.AutoTokenizer.from_pretrained(
            name, local_files_only=local_only, use_fast=True, trust_remote_code=False, **options
        )
    except ImportError as exc:  # e.g. sentencepiece or protobuf, to convert a slow tokenizer
        raise MissingDependencyError(f"{spec!r}: loading it needs {first_line(exc)}") from None
    except Exception as exc:  # OSError, ValueError, the Hub client's own errors: one clear line
        raise TokenizerLoadError(
            f"{spec!r}: cannot load the tokenizer: {first_line(exc)}"
        ) from None
    if not getattr(hf, "is_fast", False) or not hasattr(hf, "backend_tokenizer"):
        raise TokenizerLoadError(
            f"{spec!r}: {type(hf).__name__} has no fast (Rust) tokenizer, and gristmill needs "
            "one (batch encoding and character offsets for loss masks). Export a tokenizer.json "
            "for it with the tokenizers library and pass --tokenizer hf:DIR or its path"
        )
    return hf
