"""Chat templates rendered as transformers renders them, in jinja2's immutable sandbox.

A chat template comes with a tokenizer, often a downloaded one: it is untrusted code. It runs only
in ``jinja2.sandbox.ImmutableSandboxedEnvironment`` with the settings, filters and globals of
transformers' ``apply_chat_template`` (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, the
``{% generation %}`` tag, ``tojson``, ``raise_exception``, ``strftime_now``, a ``dict`` and a
``namespace`` that refuse dunder names), so that a template renders the same text here as there.

One difference, on purpose: transformers' sandbox turns a read of an unsafe attribute
(``''.__class__``) into an undefined value that renders as nothing; here it is refused at once.
A template that reaches for Python internals, or calls a method that would change a list or a
dict, stops with :class:`ChatTemplateRefused`.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gristmill.errors import GristmillError, MissingDependencyError

JINJA_HINT = "pip install 'jinja2>=3.1.6'"
MIN_JINJA = (3, 1, 6)  # older versions have known sandbox escapes
Template = str | dict[str, str]  # one template, or named ones (``default``, ``tool_use``, ...)


class ChatTemplateRefused(GristmillError):
    """A chat template that tried what jinja2's sandbox forbids: it is not rendered."""


def pick(template: Template) -> str:
    """The template that renders a conversation without tools, as transformers picks it."""
    if isinstance(template, str):
        return template
    if "default" in template:
        return template["default"]
    raise ValueError(
        "This model has multiple chat templates with no default specified! Please either pass a "
        "chat template or the name of the template you wish to use to the `chat_template` "
        f"argument. Available template names are {sorted(template)}."
    )


def render(
    source: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
    special_tokens: Mapping[str, str],
) -> str:
    """``messages`` rendered by the template ``source``; the special tokens (``bos_token``,
    ``eos_token``, ...) are variables of the template, as in transformers."""
    if not messages:
        raise ValueError(
            "Cannot apply chat template to an empty conversation. Provide at least one message."
        )
    return _compile(source).render(
        messages=[dict(m) for m in messages],
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **special_tokens,
    )


def security_error() -> type[Exception]:
    """jinja2's SecurityError (jinja2 is imported by then: a template was compiled)."""
    return _jinja2().sandbox.SecurityError


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    return _environment().from_string(source)


def _jinja2() -> Any:
    try:
        jinja2 = importlib.import_module("jinja2")
        importlib.import_module("jinja2.sandbox")
        importlib.import_module("jinja2.ext")
    except ImportError:
        raise MissingDependencyError(
            f"rendering a tokenizer's chat template needs jinja2: {JINJA_HINT}"
        ) from None
    return jinja2


@functools.cache
def _environment() -> Any:
    jinja2 = _jinja2()
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < MIN_JINJA:
        raise MissingDependencyError(
            f"rendering a chat template needs jinja2 3.1.6 or newer (older ones have known "
            f"sandbox escapes), not {jinja2.__version__}: {JINJA_HINT}"
        )
    sandbox = jinja2.sandbox

    class Sandbox(sandbox.ImmutableSandboxedEnvironment):  # type: ignore[name-defined]
        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise sandbox.SecurityError(
                f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
            )

    env = Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_generation_tag(jinja2), jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = functools.partial(_raise, jinja2.exceptions.TemplateError)
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _namespace(jinja2)
    return env


def _generation_tag(jinja2: Any) -> type:
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it;
    here it renders its body and nothing else."""

    class Generation(jinja2.ext.Extension):
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    return Generation


def _raise(kind: type[Exception], message: str) -> None:
    raise kind(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # jinja2's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    # ``dict(...)`` and ``dict.fromkeys(...)`` without handing the template the type itself.
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _namespace(jinja2: Any) -> type:
    """jinja2's ``namespace``, refusing names that start with an underscore."""
    base = jinja2.utils.Namespace

    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.sandbox.SecurityError(
                "Chat templates cannot store underscore-prefixed attributes on a namespace, but "
                f"got {name!r}. Please rename the attribute."
            )

    class TemplateNamespace(base):  # type: ignore[misc, valid-type]
        def __init__(*args: Any, **kwargs: Any) -> None:
            # jinja2's signature trick, so that ``namespace(self=...)`` still works.
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                check(name)
            base.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            check(name)
            base.__setitem__(self, name, value)

    return TemplateNamespace
