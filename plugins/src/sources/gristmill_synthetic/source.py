"""The ``synthetic:`` source: documents of random token ids, made from the seed alone.

Document ``k`` (0-based) is drawn from its own generator, seeded with ``(seed, k)``, so it is the
same whichever piece reads it: a source splits into runs of documents, and any number of
workers, tasks, ranks or DataLoader workers sees the same documents. Only the bit generator's
raw output is used (PCG64 from a SeedSequence, whose streams NumPy keeps stable), so the
documents do not depend on how NumPy's distributions draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from gristmill.plugin.atomic import fingerprint
from gristmill.plugin.components import Where
from gristmill_synthetic.settings import Settings, settings

GENERATOR = 1  # how documents are drawn from the settings: a new way is a new number
BYTES_PER_TOKEN = 4  # what a token weighs when the input is cut by size (a uint32 id)
UNIT = 2.0**-53  # the spacing of 53-bit fractions in [0, 1)


class SyntheticSource:
    """``synthetic:NAME=VALUE,…``: ``documents`` records ``{"input_ids": [...]}``; this one
    holds rows ``first + 1`` to ``first + count`` of them."""

    def __init__(self, spec: str, made: Settings, first: int = 0, count: int | None = None):
        self.spec, self.settings, self.first = spec, made, first
        self.count = made.documents if count is None else count

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        for k in range(self.first, self.first + self.count):
            yield {"input_ids": document(self.settings, k).tolist()}, Where(self.spec, k + 1, "row")

    def split(self, pieces: int) -> list[SyntheticSource]:
        n = max(1, min(pieces, self.count))
        bounds = [self.first + self.count * i // n for i in range(n + 1)]
        return [
            SyntheticSource(self.spec, self.settings, a, b - a)
            for a, b in itertools.pairwise(bounds)
        ]

    def nbytes(self) -> int:
        return math.ceil(self.count * self.settings.mean_length * BYTES_PER_TOKEN)

    def fingerprint(self) -> str:
        return fingerprint(
            ["synthetic", GENERATOR, self.settings.described(), self.first, self.count]
        )


def document(made: Settings, k: int) -> np.ndarray:
    """The token ids of document ``k`` (uint64)."""
    bits = np.random.PCG64(np.random.SeedSequence([made.seed, k]))
    if made.sigma is not None:
        u, v = bits.random_raw(2) >> np.uint64(11)
        # Box-Muller: a standard normal draw from two uniform ones (u moved into (0, 1]).
        normal = math.sqrt(-2 * math.log((int(u) + 1) * UNIT)) * math.cos(
            2 * math.pi * int(v) * UNIT
        )
        mu = math.log(made.low) - made.sigma**2 / 2  # so that the lengths' mean is low
        length = max(1, round(math.exp(mu + made.sigma * normal)))
    elif made.high > made.low:
        length = made.low + int(bits.random_raw() % (made.high - made.low + 1))
    else:
        length = made.low
    return bits.random_raw(length) % np.uint64(made.vocab_size)


def open_synthetic(
    spec: str,
    *,
    vocab_size: Any = None,
    documents: Any = None,
    length: Any = None,
    sigma: Any = None,
    seed: Any = None,
    **context: Any,
) -> SyntheticSource:
    """The source a ``synthetic:`` spec names, with the options of ``source_options``."""
    given = dict(vocab_size=vocab_size, documents=documents, length=length, sigma=sigma, seed=seed)
    return SyntheticSource(spec, settings(spec, given))


def declared_tokenizer(spec: str, **given: Any) -> str:
    """The tokenizer a synthetic spec's ids belong to: ``ids:VOCAB``."""
    return f"ids:{open_synthetic(spec, **given).settings.vocab_size}"
