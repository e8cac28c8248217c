"""Render the hook reference (docs/hooks.md) from the docstrings in :mod:`gristmill.plugin.hookspecs`.

Run ``python docs/gen_hooks.py`` after changing a hook spec or a record type; ``tests/test_docs.py``
fails while docs/hooks.md is out of date. The docstrings are reStructuredText-flavoured; only the
constructs they use are converted: inline literals and roles, ``:param x:`` / ``:return:`` fields,
version directives and ``::`` literal blocks.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import textwrap
from pathlib import Path

from gristmill.plugin import components, hookspecs

OUT = Path(__file__).resolve().parent / "hooks.md"

_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
# ":param name: text" / ":return: text", but not a line that starts with a role (":func:`x`").
_FIELD = re.compile(r"^:(\w+)(?:\s+([^:`]+))?:(?:\s+(.*))?$")
_DIRECTIVE = re.compile(r"^\.\. (versionadded|versionchanged|deprecated):: *(\S+)\s*(.*)$")
_PARAMS = "\0params"  # placeholder in the output lines
_DIRECTIVE_TEXT = {
    "versionadded": "Added in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}


def hook_functions() -> list[tuple[str, object]]:
    """Every ``gristmill_*`` hook spec, in source order."""
    found = [
        (name, obj)
        for name, obj in vars(hookspecs).items()
        if name.startswith("gristmill_") and inspect.isfunction(obj)
    ]
    return sorted(found, key=lambda item: item[1].__code__.co_firstlineno)


def _inline(text: str) -> str:
    def role(match: re.Match[str]) -> str:
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    return _LITERAL.sub(r"`\1`", _ROLE.sub(role, text))


def _rst_to_md(doc: str) -> str:
    """Convert one cleaned docstring to Markdown."""
    lines = doc.splitlines()
    out: list[str] = []
    params: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        field = _FIELD.match(line)
        directive = _DIRECTIVE.match(line)
        if field or directive:
            # A field or directive runs on over its indented continuation lines.
            body = [((field.group(3) if field else directive.group(3)) or "").strip()]
            while i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t")):
                i += 1
                body.append(lines[i].strip())
            text = _inline(" ".join(b for b in body if b))
            if directive:
                kind, version = directive.group(1), directive.group(2)
                tail = f" {text}" if text else ""
                out += [f"*{_DIRECTIVE_TEXT[kind]} {version}.*{tail}", ""]
            elif field.group(1) == "param":
                if not params:  # the parameter list goes where the first :param: stood
                    out.append(_PARAMS)
                params.append(f"- `{field.group(2).split()[-1]}`: {text}")
            elif field.group(1) in ("return", "returns"):
                out.append(f"**Returns:** {text}")
            else:
                out.append(f"**{field.group(1).capitalize()}:** {text}")
            i += 1
            continue
        if line.rstrip().endswith("::"):
            # A literal block: everything indented after the "::" line, as a Python code fence.
            lead = line.rstrip()[:-2].rstrip()
            if lead:
                out.append(_inline(lead) + ":")
                out.append("")
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            language = "toml" if code.startswith("[") else "python"
            # Shown exactly as the docstring has it: keep `ruff format` (which formats Python
            # blocks in Markdown) from rewriting it, or the page would no longer match the source.
            out += ["<!-- fmt: off -->", f"```{language}", code, "```", "<!-- fmt: on -->"]
            continue
        out.append(_inline(line))
        i += 1
    if params:
        at = out.index(_PARAMS)
        out[at : at + 1] = ["**Parameters:**", "", *params, ""]
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _signature(fn: object) -> str:
    """``(a: int = 1) -> list[X]`` with string annotations shown as written, unquoted."""

    def annotation(value: object) -> str:
        return value if isinstance(value, str) else inspect.formatannotation(value)

    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name if p.annotation is p.empty else f"{p.name}: {annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    returns = (
        "" if sig.return_annotation is sig.empty else f" -> {annotation(sig.return_annotation)}"
    )
    return f"({', '.join(params)}){returns}"


def _default(f: dataclasses.Field[object]) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "required"


def _record_table(record_type: type) -> list[str]:
    rows = ["| field | type | default |", "| --- | --- | --- |"]
    for f in dataclasses.fields(record_type):
        # "X | None" as "`X` or `None`": a pipe inside a table cell needs an escape that
        # GitHub reads and mkdocs shows.
        kind = " or ".join(f"`{part.strip()}`" for part in str(f.type).split("|"))
        rows.append(f"| `{f.name}` | {kind} | {_default(f)} |")
    return rows


def render() -> str:
    """The full text of docs/hooks.md."""
    record_of = {hook: record for hook, record in components.KINDS.values()}
    hooks = hook_functions()
    parts = [
        "<!-- Generated by docs/gen_hooks.py from gristmill/hookspecs.py: do not edit. -->",
        "",
        "# Hook reference",
        "",
        _rst_to_md(inspect.cleandoc(hookspecs.__doc__ or "")).rstrip(),
        "",
        "Records are frozen dataclasses from `gristmill.plugin.components`, built with keyword arguments.",
        "Every record has `name` (lowercase letters, digits and single dashes, starting with a",
        "letter), `description` (a one-line summary, not empty) and `requires` (the extra that",
        "installs what the component needs, or `None`).",
        "",
        "| hook | record type | summary |",
        "| --- | --- | --- |",
    ]
    for name, fn in hooks:
        record = record_of.get(name)
        summary = _inline(inspect.getdoc(fn).splitlines()[0]) if inspect.getdoc(fn) else ""
        record_name = f"`{record.__name__}`" if record else "-"
        parts.append(f"| [`{name}`](#{name}) | {record_name} | {summary} |")
    for name, fn in hooks:
        parts += [
            "",
            f"## {name}",
            "",
            "```python",
            f"@hookimpl\ndef {name}{_signature(fn)}: ...",
            "```",
        ]
        parts += ["", _rst_to_md(inspect.getdoc(fn) or "*Undocumented.*").rstrip()]
        record = record_of.get(name)
        if record is not None and dataclasses.is_dataclass(record):
            parts += ["", f"Fields of `{record.__name__}`:", "", *_record_table(record)]
    return "\n".join(parts) + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
