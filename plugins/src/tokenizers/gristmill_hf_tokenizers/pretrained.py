"""A transformers tokenizer folder read without transformers: ``tokenizers`` and the JSON configs.

transformers (5.x) loads a folder whose ``tokenizer_config.json`` names ``TokenizersBackend`` or
``PreTrainedTokenizerFast`` (or no class, with no ``config.json`` to pick one) as its generic fast
tokenizer: the ``tokenizer.json`` as it is, then the named special tokens of the configs added
to it, and a pass-through post-processor when the file has none. :func:`read` does the same steps
with the same ``tokenizers`` calls, so the backend serialises to the same JSON (the fingerprint
depends on it) and encodes to the same ids. The chat template comes from
``chat_template.jinja`` and ``additional_chat_templates/*.jinja``, else the config's
``chat_template`` (one string, or a list of named templates), as transformers takes it;
``chat_template.json`` is a processor's file, which a tokenizer does not read.

Any other folder (a model-specific class that rebuilds the tokenizer from its vocabulary, remote
code, no ``tokenizer.json``, a legacy ``added_tokens.json``) raises :class:`NotReproduced`
with the reason: transformers loads it then.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.errors import first_line
from gristmill_hf_tokenizers.backend import open_file
from gristmill_hf_tokenizers.common import TokenizerLoadError, require

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
MODEL_CONFIG_FILE = "config.json"
# The tokenizer classes transformers loads as the generic TokenizersBackend.
GENERIC_CLASSES = (None, "PreTrainedTokenizerFast", "TokenizersBackend")
# Model types (config.json) for which transformers overrides a generic class named in
# tokenizer_config.json with the model's own tokenizer class, which rebuilds the tokenizer (its
# MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS that have one); a test checks the list against the
# installed transformers.
REBUILT_MODEL_TYPES = frozenset(
    {
        "hyperclovax_vision_v2",
        "qwen2",
        "qwen3_5",
        "qwen3_5_moe",
        "qwen3_5_moe_text",
        "qwen4_exp",
        "siglip2",
    }
)
NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class NotReproduced(Exception):
    """A folder that only transformers loads exactly; the message says why."""


@dataclass
class Pretrained:
    """What gristmill takes from a tokenizer folder."""

    backend: Any  # tokenizers.Tokenizer
    chat_template: str | dict[str, str] | None
    special_tokens: dict[str, str]  # transformers' special_tokens_map: the template's variables
    declared: dict[str, int | None]  # the bos, eos and pad ids it declares
    files: tuple[str, ...] = ()  # what it was read from, relative to its folder
    saver: Any = field(default=None, repr=False)  # the transformers tokenizer, when it loaded it

    def save(self, folder: Path, directory: Path) -> None:
        """The files it was read from, copied as they are (or transformers' save_pretrained)."""
        if self.saver is not None:
            self.saver.save_pretrained(str(directory))
            return
        for name in self.files:
            target = directory / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((folder / name).read_bytes())


def read(spec: str, folder: Path, *, hub: bool = False) -> Pretrained:
    """The tokenizer in ``folder`` as transformers would load it; :class:`NotReproduced` when
    only transformers can. ``hub``: the folder is a Hub snapshot (its named templates are listed
    by the Hub, in the Hub's order)."""
    config = _config(spec, folder, hub)
    files = [TOKENIZER_FILE, *(n for n in (CONFIG_FILE,) if (folder / n).is_file())]
    path = folder / TOKENIZER_FILE
    backend = open_file(spec, path, f"cannot load the tokenizer: {path}")
    tokenizers = require("tokenizers", spec)
    template, template_files = _chat_template(folder, config)
    files += template_files
    kwargs, decoder, used_map = _special_kwargs(folder, config, backend, tokenizers.AddedToken)
    if used_map:
        files.append(SPECIAL_TOKENS_FILE)
    named, extras = _named_tokens(kwargs, tokenizers.AddedToken)
    _finish_backend(backend, tokenizers.AddedToken, config, decoder, named, extras)
    special_tokens = {key: str(value) for key, value in named.items() if value is not None}
    unk = special_tokens.get("unk_token")
    unk_id = None if unk is None else backend.token_to_id(unk)

    def declared(key: str) -> int | None:
        token = special_tokens.get(key)
        if token is None:
            return None
        found = backend.token_to_id(token)
        return unk_id if found is None else found

    return Pretrained(
        backend,
        template,
        special_tokens,
        {key: declared(f"{key}_token") for key in ("bos", "eos", "pad")},
        tuple(files),
    )


def _config(spec: str, folder: Path, hub: bool) -> dict[str, Any]:
    """tokenizer_config.json, or :class:`NotReproduced` for what only transformers loads."""
    if not (folder / TOKENIZER_FILE).is_file():
        raise NotReproduced(f"it has no {TOKENIZER_FILE} (a tokenizer only transformers converts)")
    config = _json(spec, folder / CONFIG_FILE)
    model = _json(spec, folder / MODEL_CONFIG_FILE)
    declared = config.get("tokenizer_class")
    model_type = model.get("model_type") or None
    for why in (
        declared not in GENERIC_CLASSES and f"its tokenizer class is {declared}",
        declared is None
        and (model_type or model.get("tokenizer_class"))
        and (f"{MODEL_CONFIG_FILE} picks its tokenizer class"),
        model_type in REBUILT_MODEL_TYPES and f"transformers rebuilds {model_type} tokenizers",
        "auto_map" in config and "it has code of its own (auto_map)",
        "fast_tokenizer_files" in config and "it names versioned tokenizer files",
        config.get("fix_mistral_regex") and "it asks for fix_mistral_regex",
        config.get("init_inputs") and "its config has init_inputs",
        (folder / "added_tokens.json").is_file() and "it has a legacy added_tokens.json",
        hub
        and (folder / TEMPLATE_DIR).is_dir()
        and "its named chat templates are listed by the Hub",
    ):
        if why:
            raise NotReproduced(why)
    return config


def _json(spec: str, path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"{spec!r}: cannot read {path}: {first_line(exc)}") from None
    if not isinstance(value, dict):
        raise TokenizerLoadError(f"{spec!r}: {path} is not a JSON object")
    return value


def _chat_template(
    folder: Path, config: dict[str, Any]
) -> tuple[str | dict[str, str] | None, list[str]]:
    """The template files take precedence over the config's ``chat_template``."""
    templates: dict[str, str] = {}
    files = []
    if (folder / TEMPLATE_FILE).is_file():
        templates["default"] = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
        files.append(TEMPLATE_FILE)
    if (folder / TEMPLATE_DIR).is_dir():
        for path in (folder / TEMPLATE_DIR).glob("*.jinja"):  # transformers' order, not sorted
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
            files.append(f"{TEMPLATE_DIR}/{path.name}")
    if len(templates) == 1 and "default" in templates:
        return templates["default"], files
    if templates:
        return templates, files
    value = config.get("chat_template")
    if isinstance(value, (list, tuple)):
        return {item["name"]: item["template"] for item in value}, files
    return value, files


def _special_kwargs(
    folder: Path, config: dict[str, Any], backend: Any, added: Any
) -> tuple[dict[str, Any], dict[int, Any], bool]:
    """The special-token arguments transformers' ``_from_pretrained`` gives the tokenizer: the
    config's, with ``special_tokens_map.json`` and the file's added tokens where the config has no
    ``added_tokens_decoder``; and that decoder, by id and by content."""
    kwargs = {
        key: value
        for key, value in config.items()
        if key.endswith("_token") or key in ("additional_special_tokens", "extra_special_tokens")
    }
    if "additional_special_tokens" in kwargs and not kwargs.get("extra_special_tokens"):
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    model_specific = {
        key: kwargs.pop(key)
        for key in list(kwargs)
        if key not in NAMED and key.endswith("_token") and isinstance(kwargs[key], str)
    }
    if isinstance(kwargs.get("extra_special_tokens"), dict):
        model_specific.update(kwargs.pop("extra_special_tokens"))
    decoder: dict[int, Any] = {}
    used_map = False
    if "added_tokens_decoder" in config:
        for index, token in config["added_tokens_decoder"].items():
            decoder[int(index)] = added(**token) if isinstance(token, dict) else token
    else:
        used_map = _merge_special_tokens_map(folder, kwargs, model_specific, added)
        decoder.update(backend.get_added_tokens_decoder())
    kwargs, model_specific = _added_tokens(kwargs, added), _added_tokens(model_specific, added)
    by_content = {str(token): token for token in decoder.values()}
    for key in NAMED:
        if kwargs.get(key) is not None and by_content:
            kwargs[key] = by_content.get(str(kwargs[key]), kwargs[key])
    kwargs["model_specific"] = model_specific
    return kwargs, decoder, used_map


def _merge_special_tokens_map(
    folder: Path, kwargs: dict[str, Any], model_specific: dict[str, Any], added: Any
) -> bool:
    """transformers' legacy read of special_tokens_map.json: its values replace the config's."""
    path = folder / SPECIAL_TOKENS_FILE
    if not path.is_file():
        return False
    for key, value in json.loads(path.read_text(encoding="utf-8")).items():
        if isinstance(value, dict) and key != "extra_special_tokens":
            value.pop("special", None)
            value = added(**value, special=True)
        elif key == "extra_special_tokens" and isinstance(value, list):
            existing = list(kwargs.get("extra_special_tokens") or [])
            for token in value:
                token = added(**token, special=True) if isinstance(token, dict) else token
                if token not in existing:
                    existing.append(token)
            value = existing
        kwargs[key] = value
    if isinstance(kwargs.get("extra_special_tokens"), dict):
        model_specific.update(kwargs.pop("extra_special_tokens"))
    return True


def _added_tokens(value: Any, added: Any) -> Any:
    """transformers' convert_added_tokens: ``{"__type": "AddedToken", ...}`` dicts to tokens."""
    if isinstance(value, dict) and value.get("__type") == "AddedToken":
        return added(**{k: v for k, v in value.items() if k != "__type"})
    if isinstance(value, (list, tuple)):
        return [_added_tokens(item, added) for item in value]
    if isinstance(value, dict):
        return {key: _added_tokens(item, added) for key, item in value.items()}
    return value


def _named_tokens(kwargs: dict[str, Any], added: Any) -> tuple[dict[str, Any], list[Any]]:
    """The named special tokens (the seven standard ones, then the model's own) and the extra
    ones, in the order the tokenizer's ``__init__`` keeps them."""
    named: dict[str, Any] = {key: kwargs.get(key) for key in NAMED}
    # A model's own *_token: a config's AddedToken object, or special_tokens_map.json's.
    auto = {
        key: value
        for key, value in kwargs.items()
        if key not in NAMED and key.endswith("_token") and isinstance(value, (str, added))
    }
    named.update({**auto, **kwargs["model_specific"]})
    extra = kwargs.get("extra_special_tokens", kwargs.get("additional_special_tokens"))
    if isinstance(extra, dict):
        raise NotReproduced("its extra special tokens are named in an unexpected place")
    if any(value is not None and not isinstance(value, (str, added)) for value in named.values()):
        raise NotReproduced("a special token of its config is neither a string nor a token")
    return named, list(extra or ())


def _finish_backend(
    backend: Any,
    added: Any,
    config: dict[str, Any],
    decoder: dict[int, Any],
    named: dict[str, Any],
    extras: list[Any],
) -> None:
    """What transformers' TokenizersBackend.__init__ (and its first encoding) does to the file's
    tokenizer (besides no truncation or padding): the config's added tokens and every special token it
    lacks added, and a pass-through post-processor where the file has none."""
    backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
    # transformers re-adds every token of the decoder (its check for ones already there compares
    # a token with an id and never matches); re-adding one the file has changes nothing.
    to_add = [token for _, token in sorted(decoder.items(), key=lambda item: item[0])]
    present = sorted(backend.get_added_tokens_decoder().items(), key=lambda item: item[0])
    encoder = [*(token.content for _, token in present), *(str(token) for token in to_add)]
    for value in (*named.values(), *extras):
        if value is not None and str(value) not in encoder and value not in to_add:
            to_add.append(value)
    if to_add:
        names = [str(token) for token in named.values() if token]
        tokens = []
        for token in to_add:
            if isinstance(token, str):
                token = added(token, special=True)
            elif not token.special and str(token) in names:
                token.special = True
            tokens.append(token)
        backend.add_tokens(tokens)
    if backend.post_processor is None:
        processors = importlib.import_module("tokenizers.processors")
        backend.post_processor = processors.TemplateProcessing(
            single="$A:0", pair="$A:0 $B:1", special_tokens=[]
        )
