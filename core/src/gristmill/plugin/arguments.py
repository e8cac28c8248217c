"""Checks of the arguments of gristmill's public calls, made at the call.

A float, a bool or a string where a whole number belongs is refused with the argument's name,
instead of being rounded (``seq_len=1.5``), read as 1 (``seq_len=True``) or failing deep inside
numpy (``seq_len="64"``).
"""

from __future__ import annotations

import numbers
from typing import Any

from gristmill.errors import OptionError


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a whole number: a Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, at_least: int | None = 1) -> int:
    """``value`` as a plain ``int``, once it is an integer of at least ``at_least`` (any
    integer for ``None``).

    Raises :class:`~gristmill.errors.OptionError` naming the argument and what it takes.
    """
    if not is_integer(value) or (at_least is not None and value < at_least):
        says = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            at_least, f"an integer of at least {at_least}"
        )
        raise OptionError(f"{name} must be {says}, got {value!r}")
    return int(value)
