"""The options of a ``synthetic:`` spec, read from the spec itself and from ``source_options``.

``synthetic:documents=1000,length=64..2048,vocab_size=32000,seed=1`` gives them in the spec
(comma-separated ``NAME=VALUE``), which is how a run that mixes several sources gives them to
this one alone; ``source_options`` give the same names to every source of a run.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gristmill.errors import OptionError
from gristmill.plugin.arguments import check_int, is_integer

PREFIX = "synthetic:"
MAX_VOCAB = 1 << 32  # the largest vocabulary a shard's uint32 ids hold

OPTIONS = {
    "vocab_size": "ids are drawn from 0 to vocab_size - 1 (default 50257, GPT-2's)",
    "documents": "how many documents (default 1000)",
    "length": "tokens per document: N, or MIN..MAX drawn uniformly (default 512)",
    "sigma": "lengths drawn lognormally, with length as their mean and this spread of their "
    "logarithm (default: none, lengths as length says)",
    "seed": "the same seed, the same documents (default 0)",
}


@dataclass(frozen=True)
class Settings:
    """What a synthetic source makes: ``documents`` documents of ids below ``vocab_size``, of
    ``low``..``high`` tokens drawn uniformly (``low == high``: a fixed length), or lognormally
    with mean ``low`` and log-spread ``sigma``."""

    vocab_size: int = 50257
    documents: int = 1000
    low: int = 512
    high: int = 512
    sigma: float | None = None
    seed: int = 0

    @property
    def mean_length(self) -> float:
        return float(self.low) if self.sigma is not None else (self.low + self.high) / 2

    def described(self) -> dict[str, Any]:
        """The settings as JSON values, for fingerprints."""
        return {
            "vocab_size": self.vocab_size,
            "documents": self.documents,
            "length": [self.low, self.high],
            "sigma": self.sigma,
            "seed": self.seed,
        }


def settings(spec: str, options: Mapping[str, Any]) -> Settings:
    """The settings of ``spec`` and the user's ``options`` together; a name given in both with
    two values, or any value out of range, is an :class:`~gristmill.errors.OptionError`."""
    given = {name: value for name, value in options.items() if value is not None}
    for name, value in _from_spec(spec).items():
        if name in given and _read(name, given[name], spec) != _read(name, value, spec):
            raise OptionError(
                f"{spec}: {name} is {value!r} in the spec and {given[name]!r} in the source "
                "options: give it in one place"
            )
        given[name] = value
    read = {name: _read(name, value, spec) for name, value in given.items()}
    low, high = read.pop("length", (512, 512))
    made = Settings(low=low, high=high, **read)
    if made.sigma is not None and low != high:
        raise OptionError(
            f"{spec}: sigma draws lengths around one mean: give length=N with it, not a range"
        )
    return made


def _from_spec(spec: str) -> dict[str, str]:
    """``synthetic:a=1,b=2`` → ``{"a": "1", "b": "2"}``; any other name is refused."""
    found: dict[str, str] = {}
    for item in spec.removeprefix(PREFIX).split(","):
        if not item.strip():
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not name or not value:
            raise OptionError(
                f"{spec}: expected NAME=VALUE pairs separated by commas after {PREFIX}, got "
                f"{item.strip()!r} (e.g. {PREFIX}documents=100,length=64..512)"
            )
        if name not in OPTIONS:
            close = difflib.get_close_matches(name, list(OPTIONS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise OptionError(
                f"{spec}: the synthetic source has no option {name!r}{hint} It takes: "
                + "; ".join(f"{k} ({v})" for k, v in OPTIONS.items())
            )
        if name in found:
            raise OptionError(f"{spec}: {name} is given twice")
        found[name] = value
    return found


def _read(name: str, value: Any, spec: str) -> Any:
    """One option's value, from the spec's text or a Python value, checked."""
    try:
        if name == "length":
            return _length(value)
        if name == "sigma":
            return _sigma(value)
        number = _whole(value)
        if name == "vocab_size" and is_integer(number) and number > MAX_VOCAB:
            raise OptionError(f"vocab_size must be at most {MAX_VOCAB:,} (uint32 ids)")
        return check_int(name, number, at_least=0 if name == "seed" else 1)
    except OptionError as exc:
        raise OptionError(f"{spec}: {exc}") from None


def _sigma(value: Any) -> float:
    sigma = math.nan
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            sigma = float(value)
    elif is_integer(value) or isinstance(value, float):
        sigma = float(value)
    if math.isfinite(sigma) and sigma > 0:
        return sigma
    raise OptionError(f"sigma must be a number above 0, got {value!r}")


def _whole(value: Any) -> Any:
    """A whole number written in the spec (``1000``, ``1_000``) as an int; others unchanged."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _length(value: Any) -> tuple[int, int]:
    """``512`` or ``"512"``: (512, 512); ``"64..2048"`` or ``[64, 2048]``: (64, 2048)."""
    if isinstance(value, str) and ".." in value:
        value = value.split("..", 1)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = (check_int("length", _whole(v)) for v in value)
        if high < low:
            raise OptionError(f"length MIN..MAX needs MIN <= MAX, got {low}..{high}")
        return low, high
    if isinstance(value, (list, tuple)):
        raise OptionError(f"length takes N, or MIN..MAX ([MIN, MAX]), got {value!r}")
    fixed = check_int("length", _whole(value))
    return fixed, fixed
