"""Which cached file a full mirror drops: the one needed furthest in the future.

Belady's rule (:class:`NextUse`) needs to know when each file is read next, which a loader knows
from its schedule and hands over as ``next_use(name) -> position`` (smaller is sooner; ``None``
for never again). Without one, plain random ``ds[i]`` access, a mirror drops the file least
recently used (:class:`LeastRecentlyUsed`), which re-downloads everything every epoch once the
cache is smaller than the data read in an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class EvictionPolicy(Protocol):
    """Picks the file to drop among ``candidates`` (paths in the dataset), given when each was
    last used (``last_used``: a time in seconds, larger is later)."""

    def victim(self, candidates: Sequence[str], last_used: Mapping[str, float]) -> str: ...


class LeastRecentlyUsed:
    """Drops the file used longest ago: what a mirror does without an oracle."""

    def victim(self, candidates: Sequence[str], last_used: Mapping[str, float]) -> str:
        return min(candidates, key=lambda name: (last_used.get(name, -math.inf), name))


class NextUse:
    """Belady's rule: drops the file whose next use is furthest (never again first), ties to the
    one used longest ago. ``next_use(name)``: the position of ``name``'s next read in the
    schedule, ``None`` when it is not read again; ``read(name)``, where given, is told of each
    read of a file (the mirror's), so that the schedule knows which of its reads are done."""

    def __init__(
        self,
        next_use: Callable[[str], float | int | None],
        read: Callable[[str], None] | None = None,
    ):
        self.next_use = next_use
        self._read = read

    def read(self, name: str) -> None:
        """The file ``name`` is read now."""
        if self._read is not None:
            self._read(name)

    def victim(self, candidates: Sequence[str], last_used: Mapping[str, float]) -> str:
        def key(name: str) -> tuple[float, float, str]:
            position = self.next_use(name)
            when = math.inf if position is None else float(position)
            return (-when, last_used.get(name, -math.inf), name)

        return min(candidates, key=key)
