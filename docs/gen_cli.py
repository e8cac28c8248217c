"""Render the command-line reference (docs/cli.md) from :func:`gristmill.cli.build_parser`.

Run ``python docs/gen_cli.py`` after changing a command or an option; ``tests/test_docs.py``
fails while docs/cli.md is out of date. The page is built from the parser's actions, not from
argparse's help output, so it does not depend on the terminal width or the Python version.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from gristmill.cli.main import build_parser

OUT = Path(__file__).resolve().parent / "cli.md"
WIDTH = 88  # usage lines are wrapped here, whatever the terminal


def _api_functions() -> dict[str, Callable[..., object]]:
    """The functions behind the commands whose parsers leave out what is not given
    (``argument_default=SUPPRESS``): their keyword defaults are the command's defaults."""
    import gristmill
    from gristmill.store.convert import convert

    return {"prepare": gristmill.prepare, "convert": convert}


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _arguments(action: argparse.Action) -> str:
    """What follows the option (or stands for the positional), by ``nargs``."""
    m = _metavar(action)
    nargs = action.nargs
    if nargs is None:
        return m
    if nargs == argparse.OPTIONAL:
        return f"[{m}]"
    if nargs == argparse.ZERO_OR_MORE:
        return f"[{m} ...]"
    if nargs == argparse.ONE_OR_MORE:
        return f"{m} [{m} ...]"
    if nargs == 0:
        return ""
    if isinstance(nargs, int):
        return " ".join([m] * nargs)
    return f"{m} ..."


def _documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
    ]


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction)


def _usage_part(action: argparse.Action) -> str:
    if not action.option_strings:
        return _arguments(action)
    if isinstance(action, argparse.BooleanOptionalAction):
        text = " | ".join(action.option_strings)
    elif _is_flag(action):
        text = action.option_strings[0]
    else:
        text = f"{action.option_strings[0]} {_arguments(action)}"
    return text if action.required else f"[{text}]"


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    actions = _documented(parser)
    positionals = [a for a in actions if not a.option_strings]
    optionals = [a for a in actions if a.option_strings]
    # "gristmill [--version] COMMAND ...", but "gristmill inspect DIR [--decode N] ...".
    ordered = optionals + positionals if _subcommands(parser) else positionals + optionals
    parts = [_usage_part(a) for a in ordered]
    lines, line = [], prog
    indent = " " * (len(prog) + 1)
    for part in (p for p in parts if p):
        if len(line) + 1 + len(part) > WIDTH and line.strip():
            lines.append(line)
            line = indent + part
        else:
            line += " " + part
    lines.append(line)
    return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _paragraph(text: str) -> str:
    return " ".join(text.split())


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        many = action.nargs in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE)
        return f"`{_metavar(action)}{' ...' if many else ''}`"
    if _is_flag(action):
        return ", ".join(f"`{s}`" for s in action.option_strings)
    *short, last = action.option_strings
    return ", ".join([*(f"`{s}`" for s in short), f"`{last} {_arguments(action)}`"])


def _value(value: object, action: argparse.Action) -> str:
    if value is None or (isinstance(action, argparse._AppendAction) and not value):
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def _default(action: argparse.Action, api: Callable[..., object] | None) -> str:
    if not action.option_strings:
        return "—" if action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE) else "required"
    if action.required:
        return "required"
    if isinstance(action, argparse._VersionAction):
        return "—"
    default = action.default
    if default == argparse.SUPPRESS:
        if isinstance(action, argparse._StoreTrueAction):
            return "off"
        parameter = inspect.signature(api).parameters.get(action.dest) if api else None
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return "—"
        default = parameter.default
    return _value(default, action)


def _table(parser: argparse.ArgumentParser, api: Callable[..., object] | None) -> list[str]:
    rows = ["| argument | default | meaning |", "| --- | --- | --- |"]
    for action in _documented(parser):
        if isinstance(action, argparse._SubParsersAction):
            continue
        rows.append(f"| {_names(action)} | {_default(action, api)} | {_cell(action.help or '')} |")
    return rows


def render() -> str:
    """The full text of docs/cli.md."""
    parser = build_parser()
    prog = parser.prog
    commands = _subcommands(parser)
    api = _api_functions()
    parts = [
        "<!-- Generated by docs/gen_cli.py from gristmill.cli.main.build_parser(): do not edit. -->",
        "",
        "# Command-line reference",
        "",
        _paragraph(parser.description or ""),
        "",
        "```text",
        _usage(prog, parser),
        "```",
        "",
        "| command | what it does |",
        "| --- | --- |",
        *(f"| [`{name}`](#{prog}-{name}) | {_cell(text)} |" for name, text, _ in commands),
        "",
        f"`{prog} COMMAND --help` prints the same, in the terminal. In the tables below, *default*",
        "is what applies when the option is left out. Commands that take `--config FILE` use the",
        "file's value instead where it has one; `prepare` and `convert` leave out of the call what",
        "is not given, so their defaults are those of `gristmill.prepare` and",
        "`gristmill.store.convert.convert`.",
    ]
    if parser.epilog:
        parts += ["", "```text", parser.epilog.strip("\n"), "```"]
    for name, _, sub in commands:
        parts += [
            "",
            f"## {prog} {name}",
            "",
            _paragraph(sub.description or ""),
            "",
            "```text",
            _usage(f"{prog} {name}", sub),
            "```",
            "",
            *_table(sub, api.get(name) if sub.argument_default == argparse.SUPPRESS else None),
        ]
        if sub.epilog:
            parts += ["", "```text", sub.epilog.strip("\n"), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
