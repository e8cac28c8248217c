"""The ``concat-chunk`` packer: the split's tokens as one stream, cut into windows of seq_len.

As nanoGPT and Megatron-LM do for pretraining, documents follow each other in order and a window
may end in the middle of one; the rest of it opens the next window. Every token is served once,
only the last window is short, and no document is too long (``overlong`` does not apply).

Each window still records its document segments. By default a window is one sequence: positions
run 0…seq_len-1 and labels continue across documents, as in nanoGPT. With ``restart=True``
(``open_dataset``, ``stream``) positions and labels restart at every segment, so each document,
and each piece of one cut by a window edge, is its own sequence, as in any packed sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import DatasetError
from gristmill.plugin.components import PackerType, PackPlan, Segment
from gristmill.plugin.overlong import check_policy


class ConcatChunkPacker:
    def __init__(self, overlong: str = "truncate", **options: Any):
        check_policy(overlong)  # valid, but windows cut every document: nothing is overlong

    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        seq_len = _required(seq_len)
        lengths = np.asarray(lengths, np.int64)
        kept = lengths[lengths > 0]
        docs = np.flatnonzero(lengths > 0)
        ends = np.cumsum(kept)
        starts = ends - kept
        total = int(ends[-1]) if len(ends) else 0
        # A segment starts wherever a document or a window does (positions in the token stream).
        cuts = np.union1d(starts, np.arange(0, total, seq_len, dtype=np.int64))
        owner = np.searchsorted(ends, cuts, side="right")
        windows = -(-total // seq_len)
        return PackPlan(
            sample_bounds=np.searchsorted(cuts // seq_len, np.arange(windows + 1)).astype(np.int64),
            seg_doc=docs[owner],
            seg_start=cuts - starts[owner],
            seg_len=np.diff(np.append(cuts, total)),
        )

    def online(self, seq_len: int | None) -> Window:
        return Window(_required(seq_len))


def _required(seq_len: int | None) -> int:
    if seq_len is None:
        raise DatasetError("the concat-chunk packer cuts windows of seq_len tokens: pass seq_len")
    return seq_len


class Window:
    """The window being filled (an :class:`~gristmill.plugin.components.OnlinePacker`)."""

    dropped = 0  # nothing is ever left out

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.segments: list[Segment] = []
        self.filled = 0

    def push(self, items: Sequence[Any], lengths: np.ndarray) -> list[list[Segment]]:
        closed = []
        for item, length in zip(items, np.asarray(lengths).tolist()):
            start = 0
            while start < length:
                size = min(length - start, self.seq_len - self.filled)
                self.segments.append((item, start, size))
                start += size
                self.filled += size
                if self.filled == self.seq_len:
                    closed.append(self.segments)
                    self.segments, self.filled = [], 0
        return closed

    def flush(self) -> list[list[Segment]]:
        closed = [self.segments] if self.segments else []
        self.segments, self.filled = [], 0
        return closed


@hookimpl
def gristmill_packers() -> list[PackerType]:
    return [
        PackerType(
            name="concat-chunk",
            description="the token stream cut into seq_len windows (pretraining, as nanoGPT); "
            "documents may span windows",
            factory=ConcatChunkPacker,
            restart=False,
        )
    ]
