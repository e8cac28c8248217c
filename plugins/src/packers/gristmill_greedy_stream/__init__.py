"""The ``greedy-stream`` packer: best fit among a bounded buffer of open samples, online.

Documents are packed in the order they arrive. Each goes into the open sample whose free space is
the smallest that still holds it; when none has room a new sample opens, and when
``buffer_size`` samples are open already, the fullest of them is closed first to make way. A
sample closes as soon as it is full, and the rest close, in the order they opened, when the
stream ends. So at most ``buffer_size × seq_len`` tokens wait in memory however long the stream
is. A larger buffer packs tighter but holds more and delays samples longer; ``stream()``'s
``stats`` and ``gristmill inspect`` report the efficiency.

Over a prepared split's lengths the same algorithm gives ``open_dataset(packer="greedy-stream")``
exactly the samples ``stream()`` gives for the same documents. Overlong documents are truncated,
cut into pieces or dropped (``overlong``, see :mod:`gristmill.plugin.overlong`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import DatasetError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.components import PackerType, PackPlan, Segment
from gristmill.plugin.overlong import check_policy, pieces
from gristmill.plugin.packing import FreeSpace, plan_online

DEFAULT_BUFFER_SIZE = 128  # open samples (docs/benchmarks.md weighs buffer sizes)


class GreedyStreamPacker:
    def __init__(
        self, overlong: str = "truncate", buffer_size: int = DEFAULT_BUFFER_SIZE, **options: Any
    ):
        self.overlong = check_policy(overlong)
        self.buffer_size = check_int("greedy-stream's buffer_size", buffer_size)

    def online(self, seq_len: int | None) -> OpenSamples:
        if seq_len is None:
            raise DatasetError(
                "the greedy-stream packer fills samples of seq_len tokens: pass seq_len"
            )
        return OpenSamples(seq_len, self.buffer_size, self.overlong)

    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        return plan_online(self.online(seq_len), lengths)


class OpenSamples:
    """The buffer of open samples (an :class:`~gristmill.plugin.components.OnlinePacker`)."""

    def __init__(self, seq_len: int, buffer_size: int, overlong: str):
        self.seq_len, self.buffer_size, self.overlong = seq_len, buffer_size, overlong
        self.space = FreeSpace()
        self.open: dict[int, list[Segment]] = {}  # by the order samples opened
        self.opened = 0
        self.dropped = 0

    def push(self, items: Sequence[Any], lengths: np.ndarray) -> list[list[Segment]]:
        doc, start, length, dropped = pieces(lengths, self.seq_len, self.overlong)
        self.dropped += dropped
        space, open_samples, closed = self.space, self.open, []
        for d, first, size in zip(doc.tolist(), start.tolist(), length.tolist()):
            found = space.take(size)
            if found is None:
                if len(open_samples) == self.buffer_size:
                    fullest, _ = space.take(0)  # type: ignore[misc]  # every open sample has room
                    closed.append(open_samples.pop(fullest))
                sample, free = self.opened, self.seq_len
                self.opened += 1
                open_samples[sample] = []
            else:
                sample, free = found
            open_samples[sample].append((items[d], first, size))
            if free > size:
                space.put(sample, free - size)
            else:
                closed.append(open_samples.pop(sample))
        return closed

    def flush(self) -> list[list[Segment]]:
        closed = [self.open[sample] for sample in sorted(self.open)]
        self.open.clear()
        self.space = FreeSpace()
        return closed


@hookimpl
def gristmill_packers() -> list[PackerType]:
    return [
        PackerType(
            name="greedy-stream",
            description="online best fit into a bounded buffer of open samples "
            "(option buffer_size, default 128); works on streams",
            factory=GreedyStreamPacker,
            options={
                "buffer_size": f"open samples at most (default {DEFAULT_BUFFER_SIZE}): "
                "larger packs tighter, holds more in memory"
            },
        )
    ]
