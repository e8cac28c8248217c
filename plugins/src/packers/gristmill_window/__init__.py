"""The ``window`` packer: best fit within a sliding window of the next documents, in corpus order.

Samples are filled one at a time. The window is the ``window`` (N) earliest documents not placed
yet. A sample opens with the earliest of them; then, while a document of the window fits in the
space left, the longest that fits joins the sample (the earliest among equal lengths), and the
next document of the split slides into the window. When none fits, the sample closes and the
next opens. So the split's order stays nearly intact:

- every sample begins with the earliest document not placed yet (samples are in corpus order of
  their first document);
- when a document is placed, fewer than N documents before it are still unplaced: none is served
  ahead of more than N - 1 documents that come before it in the split.

``window=1`` is next fit (one open sample, closed when the next document does not fit it); a
window as long as the split fills each sample with the longest documents that fit, as
first-fit-decreasing does, but each sample still begins with the earliest document left.

It packs online too (``stream()``): a document waits until N documents after the earliest
unplaced one have arrived, so at most N documents and the one sample being filled are held back.
The plan is the online packing of the split's documents in order, so both serve the same
samples. Overlong documents are truncated, cut into pieces or dropped (``overlong``, see
:mod:`gristmill.plugin.overlong`); a piece is placed like a document.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from gristmill import hookimpl
from gristmill.errors import DatasetError
from gristmill.plugin.arguments import check_int
from gristmill.plugin.components import PackerType, PackPlan, Segment
from gristmill.plugin.overlong import check_policy, pieces

# Documents a window holds unless the user says: docs/packing.md weighs the choice.
DEFAULT_WINDOW = 16


class WindowPacker:
    def __init__(self, overlong: str = "truncate", window: int = DEFAULT_WINDOW, **options: Any):
        self.overlong = check_policy(overlong)
        self.window = check_int("the window packer's window", window)

    def online(self, seq_len: int | None) -> WindowSamples:
        return WindowSamples(_required(seq_len), self.window, self.overlong)

    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        seq_len = _required(seq_len)
        doc, start, length, dropped = pieces(lengths, seq_len, self.overlong)
        window = Window(self.window, seq_len)
        window.extend(length.tolist())
        samples = window.fill(final=True)
        bounds = np.zeros(len(samples) + 1, np.int64)
        np.cumsum([len(s) for s in samples], out=bounds[1:])
        placed = np.fromiter(chain.from_iterable(samples), np.int64, count=len(doc))
        return PackPlan(
            sample_bounds=bounds,
            seg_doc=doc[placed],
            seg_start=start[placed],
            seg_len=length[placed],
            dropped=dropped,
        )


def _required(seq_len: int | None) -> int:
    if seq_len is None:
        raise DatasetError("the window packer fills samples of seq_len tokens: pass seq_len")
    return seq_len


class Window:
    """The pieces not placed yet, numbered in arrival order, and the sample being filled.

    The first ``size`` of them are the window: indexed by length (the distinct lengths sorted,
    and the pieces of each length in arrival order), so the longest piece that fits is a
    binary search away. The others wait their turn in arrival order.
    """

    def __init__(self, size: int, seq_len: int):
        self.size, self.seq_len = size, seq_len
        self.arrived = 0  # pieces numbered so far
        self.waiting: deque[tuple[int, int]] = deque()  # (piece, length) behind the window
        self.order: deque[tuple[int, int]] = deque()  # the window in arrival order (and some
        self.taken: set[int] = set()  # pieces of it placed already, dropped when at the front)
        self.amounts: list[int] = []  # the distinct lengths in the window, sorted
        self.of_length: dict[int, deque[int]] = {}
        self.held = 0  # pieces in the window
        self.sample: list[int] | None = None  # the sample being filled
        self.free = 0  # its free space

    def extend(self, lengths: list[int]) -> None:
        """Pieces of these lengths arrive, after those before."""
        first = self.arrived
        self.arrived += len(lengths)
        self.waiting.extend(zip(range(first, self.arrived), lengths))
        while self.held < self.size and self.waiting:
            self._enter()

    def _enter(self) -> None:
        piece, length = self.waiting.popleft()
        self.order.append((piece, length))
        same = self.of_length.get(length)
        if same is None:
            self.of_length[length] = same = deque()
            bisect.insort(self.amounts, length)
        same.append(piece)
        self.held += 1

    def _leave(self, length: int, at: int) -> int:
        """The earliest piece of ``length`` (``amounts[at]``), out of the window; the next
        waiting piece takes its place."""
        same = self.of_length[length]
        piece = same.popleft()
        if not same:
            del self.of_length[length], self.amounts[at]
        self.held -= 1
        if self.waiting:
            self._enter()
        return piece

    def fill(self, *, final: bool) -> list[list[int]]:
        """The samples closed while the window is full (or, when no more pieces come, until
        every piece is placed): lists of pieces."""
        closed: list[list[int]] = []
        amounts, order, taken = self.amounts, self.order, self.taken
        while self.held == self.size or (final and self.held):
            if self.sample is None:  # the earliest unplaced piece opens the next sample
                piece, length = order.popleft()
                while piece in taken:
                    taken.discard(piece)
                    piece, length = order.popleft()
                self._leave(length, bisect.bisect_left(amounts, length))
                self.sample, self.free = [piece], self.seq_len - length
                continue
            at = bisect.bisect_right(amounts, self.free) - 1
            if at < 0:  # nothing in the window fits: the sample is done
                closed.append(self.sample)
                self.sample = None
                continue
            length = amounts[at]
            piece = self._leave(length, at)
            taken.add(piece)
            self.sample.append(piece)
            self.free -= length
        if final and self.sample is not None:
            closed.append(self.sample)
            self.sample = None
        return closed


class WindowSamples:
    """The window packer online (an :class:`~gristmill.plugin.components.OnlinePacker`)."""

    def __init__(self, seq_len: int, size: int, overlong: str):
        self.seq_len, self.size, self.overlong = seq_len, size, overlong
        self.window = Window(size, seq_len)
        self.segments: dict[int, Segment] = {}  # the pieces not placed yet, by number
        self.dropped = 0

    def push(self, items: Sequence[Any], lengths: np.ndarray) -> list[list[Segment]]:
        doc, start, length, dropped = pieces(lengths, self.seq_len, self.overlong)
        self.dropped += dropped
        first = self.window.arrived
        for k, (d, s, n) in enumerate(zip(doc.tolist(), start.tolist(), length.tolist())):
            self.segments[first + k] = (items[d], s, n)
        self.window.extend(length.tolist())
        return self._segments(self.window.fill(final=False))

    def flush(self) -> list[list[Segment]]:
        closed = self._segments(self.window.fill(final=True))
        self.window = Window(self.size, self.seq_len)
        return closed

    def _segments(self, samples: list[list[int]]) -> list[list[Segment]]:
        pop = self.segments.pop
        return [[pop(piece) for piece in sample] for sample in samples]


@hookimpl
def gristmill_packers() -> list[PackerType]:
    return [
        PackerType(
            name="window",
            description="best fit within a sliding window of the next documents, in corpus "
            f"order (option window, default {DEFAULT_WINDOW}; window_N names it); works on streams",
            factory=WindowPacker,
            number_option="window",
            options={
                "window": f"documents the best fit chooses among (default {DEFAULT_WINDOW}): "
                "larger packs tighter, moves documents further from their order"
            },
        )
    ]
