"""The optional rules that tidy a text file's lines, and line deduplication.

The rules (source option ``clean``): ``control`` removes control characters (Unicode category
Cc) but tab and newline, so a carriage return goes too; ``trailing-space`` strips whitespace at
the end of every line; ``blank-lines`` makes each run of blank lines one empty line and drops
blank lines at the start and end of a unit that holds several lines (a whole file).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from gristmill.errors import OptionError

RULES = ("control", "trailing-space", "blank-lines")
# Cc is U+0000–U+001F and U+007F–U+009F; tab (U+0009) and newline (U+000A) stay.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]+")
# Whitespace (what str.isspace calls whitespace) but newlines, at the end of each line.
TRAILING = re.compile(r"[^\S\n]+$", re.MULTILINE)


def check_clean(clean: Any) -> tuple[str, ...]:
    """The rules ``clean`` asks for, in their fixed order: ``True`` for all, ``False`` or
    ``None`` for none, or a rule's name or a list of them."""
    if clean is None or clean is False:
        return ()
    if clean is True:
        return RULES
    names = [clean] if isinstance(clean, str) else clean
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        unknown = [n for n in names if n not in RULES]
        if not unknown:
            return tuple(rule for rule in RULES if rule in names)
        problem = f"has no rule {unknown[0]!r}"
    else:
        problem = f"must be true, false or a list of rule names, got {clean!r}"
    raise OptionError(f"source 'text': clean {problem}; its rules are {', '.join(RULES)}")


def line_ends(text: str) -> str:
    """``text`` whose lines end with ``\\n`` alone: a ``\\r\\n`` ending loses its ``\\r``, and so
    does a last line that ends with ``\\r``."""
    if "\r" not in text:
        return text
    text = text.replace("\r\n", "\n")
    return text[:-1] if text.endswith("\r") else text


def cleaner(rules: tuple[str, ...]) -> Callable[[str], str] | None:
    """What the line rules do to a text of any number of lines (``None``: nothing); each
    runs over the whole text at once. A partial, so that a source holding it pickles."""
    control, trailing = "control" in rules, "trailing-space" in rules
    if not (control or trailing):
        return None
    return functools.partial(_clean, control=control, trailing=trailing)


def _clean(text: str, *, control: bool, trailing: bool) -> str:
    if control:
        text = CONTROL.sub("", text)
    return TRAILING.sub("", text) if trailing else text


class SeenLines:
    """The lines met so far, each kept as a 16-byte digest (a collision, about 2^-128 for a pair,
    would drop a line that is not a repeat; a shorter key would not be safe at billions of
    lines), so that memory grows with the number of distinct lines, not their length."""

    def __init__(self) -> None:
        self.digests: set[bytes] = set()

    def repeats(self, line: str) -> bool:
        """Whether ``line`` was met before; remembers it when not."""
        key = hashlib.blake2b(line.encode(), digest_size=16).digest()
        if key in self.digests:
            return True
        self.digests.add(key)
        return False


def rewrite(
    text: str,
    clean: Callable[[str], str] | None,
    seen: SeenLines | None,
    collapse: bool,
    counts: Counter[str],
) -> str:
    """A whole file's text with the rules applied: lines end with ``\\n``, the line rules run,
    repeats of earlier lines are dropped and counted under ``duplicate-line``, and with
    ``collapse`` each run of blank lines becomes one empty line."""
    text = line_ends(text)
    if clean is not None:
        text = clean(text)
    if seen is None and not collapse:
        return text
    out: list[str] = []
    gap = False  # a blank line since the last line kept
    for line in text.split("\n"):
        blank = not line or line.isspace()
        if not blank and seen is not None and seen.repeats(line):
            counts["duplicate-line"] += 1
            continue
        if not collapse:
            out.append(line)
        elif blank:
            gap = bool(out)
        else:
            if gap:
                out.append("")
            out.append(line)
            gap = False
    return "\n".join(out)
