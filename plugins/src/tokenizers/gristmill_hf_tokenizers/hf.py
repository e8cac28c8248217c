"""``hf:NAME_OR_PATH``: a Hugging Face tokenizer folder, local or from the Hub.

The folder is read without transformers (see :mod:`gristmill_hf_tokenizers.pretrained`): its
``tokenizer.json`` with ``tokenizers``, its special tokens and chat template from the JSON configs,
exactly as transformers reads them. A folder only transformers can load (no ``tokenizer.json``, a
model-specific tokenizer class) is loaded by transformers, with a log line saying why. Either way
the chat template renders in jinja2's sandbox (see :mod:`gristmill_hf_tokenizers.template`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gristmill.errors import DataError, GristmillError, MissingDependencyError, first_line
from gristmill.plugin.network import probe_url
from gristmill_hf_tokenizers import pretrained, template
from gristmill_hf_tokenizers.backend import BackendTokenizer, specials_of
from gristmill_hf_tokenizers.chat import Conversation, render_by_prefixes
from gristmill_hf_tokenizers.common import (
    Specials,
    TokenizerLoadError,
    describe,
    digest,
    log,
    require,
)
from gristmill_hf_tokenizers.engines import Checked
from gristmill_hf_tokenizers.pretrained import NotReproduced, Pretrained

PROBE_TIMEOUT = 5.0  # seconds: a clear "offline" beats the library's retries
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# What a Hub repository's tokenizer is read from (transformers fetches the rest when it loads).
HUB_FILES = (
    pretrained.TOKENIZER_FILE,
    pretrained.CONFIG_FILE,
    pretrained.SPECIAL_TOKENS_FILE,
    pretrained.TEMPLATE_FILE,
    f"{pretrained.TEMPLATE_DIR}/*.jinja",
    pretrained.MODEL_CONFIG_FILE,
    "added_tokens.json",
)


class HFTokenizer(BackendTokenizer):
    """A Hugging Face tokenizer folder behind gristmill's Tokenizer protocol."""

    def __init__(
        self,
        spec: str,
        folder: Path,
        loaded: Pretrained,
        specials: Specials,
        engine: str = "auto",
        checked: Checked | None = None,
    ):
        self.folder, self.pretrained = folder, loaded
        self.source = spec  # the spec the user gave (a reloaded copy's is in its config)
        super().__init__(spec, loaded.backend, specials, engine, checked=checked)

    # --- creating and reloading ------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: str, engine: str = "auto", **options: Any) -> HFTokenizer:
        """The tokenizer ``spec`` names; ``engine`` is ``auto``, ``hf`` or ``gigatoken`` (see
        :mod:`gristmill_hf_tokenizers.engines`). Other context keywords are ignored."""
        name = spec.removeprefix("hf:")
        if not name:
            raise TokenizerLoadError(f"{spec!r}: name a tokenizer: hf:ORG/NAME or hf:FOLDER")
        folder, loaded = _load(spec, name)
        specials = specials_of(spec, loaded.backend, **loaded.declared)
        tok = cls.create(spec, folder, loaded, specials, engine)
        describe(spec, specials, loaded.backend.id_to_token)
        return tok

    @classmethod
    def create(
        cls,
        spec: str,
        folder: Path,
        loaded: Pretrained,
        specials: Specials,
        engine: str = "auto",
        checked: Checked | None = None,
    ) -> HFTokenizer:
        """The tokenizer, able to render chat when the folder has a chat template."""
        kind = HFChatTokenizer if loaded.chat_template else cls
        return kind(spec, folder, loaded, specials, engine, checked)

    @classmethod
    def load(
        cls,
        directory: Path,
        config: Mapping[str, Any],
        engine: str = "auto",
        checked: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> HFTokenizer:
        """The dataset's copy; ``checked`` (a tokenizer's ``handoff()``): its fast engine agreed
        with the reference already, and is not checked again."""
        spec = f"hf:{directory}"
        loaded = _open_folder(spec, directory, str(directory), announce=False)
        trusted = Checked.from_mapping(checked)
        tok = cls.create(spec, directory, loaded, Specials.from_config(config), engine, trusted)
        tok.source = config.get("source", spec)
        return tok

    def save(self, directory: Path) -> dict[str, Any]:
        self.pretrained.save(self.folder, directory)
        # The spec it was made from, for messages about it from a copy (a worker's).
        return {**self.specials.as_config(), "source": self.source}

    def fingerprint(self) -> str:
        """Changes whenever the ids, the specials or the chat rendering could."""
        return digest(
            self.backend.to_str(),
            repr(self.pretrained.chat_template),
            repr(self.specials.as_config()),
        )


class HFChatTokenizer(HFTokenizer):
    """A tokenizer with a chat template: chat examples are rendered with it."""

    def render_chat(
        self, messages: tuple[tuple[str, str], ...], *, train_on_prompt: bool = False
    ) -> tuple[str, tuple[tuple[int, int], ...]]:
        """The conversation as the template renders it, and its assistant turns' spans."""
        return render_by_prefixes(self._render, messages, train_on_prompt)

    def _render(self, conversation: Conversation, add_generation_prompt: bool) -> str:
        assert self.pretrained.chat_template
        try:
            source = template.pick(self.pretrained.chat_template)
            text = template.render(
                source, conversation, add_generation_prompt, self.pretrained.special_tokens
            )
        except GristmillError:  # jinja2 missing or too old
            raise
        except Exception as exc:
            if isinstance(exc, template.security_error()):
                raise template.ChatTemplateRefused(
                    f"{self.source}: its chat template was stopped by jinja2's sandbox: {exc}. A "
                    "chat template comes with the tokenizer and is untrusted code: one that "
                    "reaches for Python internals or changes Python objects is refused, not run"
                ) from None
            # The template's own raise_exception(), or a Jinja error.
            raise DataError(
                f"the tokenizer's chat template cannot render this conversation: "
                f"{type(exc).__name__}: {exc}",
                field="messages",
            ) from None
        return text


# --- finding the tokenizer -----------------------------------------------------------------------


def _load(spec: str, name: str) -> tuple[Path, Pretrained]:
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder, _open_folder(spec, folder, str(folder))
    if folder.is_file():
        raise TokenizerLoadError(
            f"{spec!r}: hf: takes a folder or a Hub id; for a tokenizers JSON file pass its path "
            "alone (--tokenizer PATH/tokenizer.json)"
        )
    repo, _, revision = name.partition("@")
    if name.startswith((".", "/", "~")) or not HUB_ID.match(repo):
        raise TokenizerLoadError(f"{spec!r}: no such folder: {folder}")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        try:
            return _from_hub(spec, repo, revision or None, True)
        except TokenizerLoadError:
            raise TokenizerLoadError(
                f"{spec!r}: HF_HUB_OFFLINE is set and {repo} is not in the local Hugging Face "
                f"cache. {_LOCAL_FOLDER_HINT.format(repo=repo)}"
            ) from None
    try:
        probe_url(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
    except OSError as exc:
        try:  # a copy cached by an earlier run still works offline
            found = _from_hub(spec, repo, revision or None, True)
        except TokenizerLoadError:
            raise TokenizerLoadError(
                f"{spec!r}: cannot reach {constants.ENDPOINT} ({exc}); gristmill looks offline "
                f"and {repo} is not in the local Hugging Face cache. "
                f"{_LOCAL_FOLDER_HINT.format(repo=repo)}"
            ) from None
        log.warning(f"{spec}: cannot reach {constants.ENDPOINT}; using the cached copy")
        return found
    return _from_hub(spec, repo, revision or None, False)


def _from_hub(
    spec: str, repo: str, revision: str | None, local_only: bool
) -> tuple[Path, Pretrained]:
    """The repository's tokenizer files (downloaded, or the cached copy with ``local_only``)."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo, revision=revision, allow_patterns=list(HUB_FILES), local_files_only=local_only
        )
    except Exception as exc:  # not cached, no such repository, the Hub client's own errors
        raise TokenizerLoadError(
            f"{spec!r}: cannot load the tokenizer: {first_line(exc)}"
        ) from None
    hub = {"revision": revision, "local_only": local_only}
    return Path(folder), _open_folder(spec, Path(folder), repo, hub=hub)


def _open_folder(
    spec: str,
    folder: Path,
    name: str,
    *,
    hub: dict[str, Any] | None = None,
    announce: bool = True,
) -> Pretrained:
    """The tokenizer in ``folder``, read as transformers reads it; else loaded by transformers
    (from ``name``, a Hub id with ``hub``'s options when it came from the Hub)."""
    try:
        why = _not_transformers_5()
        if why is None:
            return pretrained.read(spec, folder, hub=hub is not None)
    except NotReproduced as exc:
        why = str(exc)
    (log.info if announce else log.debug)(f"{spec}: loaded with transformers: {why}")
    transformers = require("transformers", spec, why)
    options = {"revision": hub["revision"]} if hub else {}
    local_only = hub["local_only"] if hub else True
    return _from_transformers(_from_pretrained(spec, transformers, name, local_only, **options))


def _not_transformers_5() -> str | None:
    """Why the folder is left to transformers whatever it holds: an installed transformers 4,
    which loads some folders otherwise than the transformers 5 that gristmill reproduces."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("transformers")
    except PackageNotFoundError:
        return None
    major = installed.split(".")[0]
    return f"transformers {installed} is installed" if major.isdigit() and int(major) < 5 else None


def _from_transformers(hf: Any) -> Pretrained:
    backend = hf.backend_tokenizer
    # transformers stops cutting and padding on its first call; gristmill calls the backend.
    backend.no_truncation()
    backend.no_padding()
    declared = {"bos": hf.bos_token_id, "eos": hf.eos_token_id, "pad": hf.pad_token_id}
    chat_template = getattr(hf, "chat_template", None)
    return Pretrained(backend, chat_template, dict(hf.special_tokens_map), declared, saver=hf)


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
