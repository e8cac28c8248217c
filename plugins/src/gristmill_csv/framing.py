"""Cutting CSV bytes into records: a newline ends a record iff an even number of quotes precede it.

RFC 4180 quotes every field that holds a newline and doubles the quotes inside a quoted field, so
the running count of ``"`` bytes is odd exactly inside quoted fields. That rule keeps one bit of
state instead of a parser's, so it runs as array operations over each chunk (no Python loop over
bytes), and it finds the same boundaries from any record start. The reader frames records with it
and ``split`` cuts byte ranges with it: each piece then frames exactly the records a reader of the
whole file sees there, which is what keeps pieces disjoint and line numbers right.

The price is a bare quote inside an unquoted field (``5'11"``, not allowed by RFC 4180): the record
runs on to the next quote. The csv parser still finds the rows inside such a frame; a quote that is
never closed ends as a ``malformed-csv`` or ``too-large`` rejection at the line where it started,
never as a silently merged record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

QUOTE, NEWLINE = ord('"'), ord("\n")


class Frame(NamedTuple):
    """One record's bytes as framed by quote parity (a blank line is a frame too)."""

    start: int  # byte offset in the (decompressed) file
    line: int  # 1-based physical line where it starts
    lines: int  # physical lines it spans
    data: bytes | None  # with the newline that ends it, if any; None when over the size limit


class Run(NamedTuple):
    """Consecutive frames read in one go, so that one csv reader can parse them all.

    ``data`` is their bytes, each frame with the newline that ends it (the last frame of a file
    may have none); ``line_ends[i]`` and ``byte_ends[i]`` are where frame ``i`` ends, in lines
    and bytes from the start of the run. ``data`` is None for a single frame over the size limit.
    """

    start: int
    line: int
    data: bytes | None
    line_ends: list[int]
    byte_ends: list[int]

    def frames(self) -> Iterator[Frame]:
        """The run's frames one by one."""
        line, byte = 0, 0
        for line_end, byte_end in zip(self.line_ends, self.byte_ends):
            data = None if self.data is None else self.data[byte:byte_end]
            yield Frame(self.start + byte, self.line + line, line_end - line, data)
            line, byte = line_end, byte_end


def _record_ends(chunk: bytes, quotes_before: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The record-ending newlines of ``chunk``: their positions and their index among the chunk's
    newlines; then how many newlines and quotes the chunk holds (to carry into the next one)."""
    data = np.frombuffer(chunk, dtype=np.uint8)
    newlines = np.flatnonzero(data == NEWLINE)
    quotes = np.flatnonzero(data == QUOTE)
    # Quotes before each newline = its insertion point among the quote positions.
    even = ((np.searchsorted(quotes, newlines) + quotes_before) & 1) == 0
    index = np.flatnonzero(even)
    return newlines[index], index, len(newlines), len(quotes)


def runs(
    chunks: Iterable[bytes],
    *,
    max_bytes: int,
    start: int = 0,
    first_line: int = 1,
    stop_when_too_large: bool = False,
) -> Iterator[Run]:
    """Every record of a byte stream that begins at a record boundary (offset ``start``).

    Yields a run of frames per chunk, and a frame longer than ``max_bytes`` on its own with
    ``data=None``: its bytes are counted and dropped as they stream past, never held, so a file
    with no newline at all still reads in bounded memory. ``stop_when_too_large`` ends the stream
    at such a frame instead of reading on to its end (the header reader has no use for the rest).
    """
    pending: list[bytes] = []  # the start of a frame that continues into the next chunk
    size = 0
    too_large = False
    frame_start, frame_line = start, first_line
    offset, newlines_before, quotes_before = start, 0, 0
    newline_last = False  # whether the last byte read is a newline
    for chunk in chunks:
        if not chunk:
            continue
        newline_last = chunk[-1] == NEWLINE
        ends, index, newlines, quotes = _record_ends(chunk, quotes_before)
        if len(ends):
            after = ends + 1  # where the next frame begins, in the chunk
            next_lines = first_line + newlines_before + index + 1
            sizes = np.diff(after, prepend=0)
            sizes[0] += size  # the part read with earlier chunks (over the limit if too_large)
            over = np.flatnonzero(sizes > max_bytes + 1).tolist()  # + 1: the newline
            pos, line = 0, frame_line
            for first, stop in _runs_between(over, len(ends)):
                begin = 0 if first == 0 else int(after[first - 1])
                begin_line = frame_line if first == 0 else int(next_lines[first - 1])
                if stop == first:  # a frame over the limit
                    yield Run(
                        frame_start if first == 0 else offset + begin,
                        begin_line,
                        None,
                        [int(next_lines[first]) - begin_line],
                        [0],
                    )
                    if stop_when_too_large:
                        return
                    stop += 1
                else:
                    head = b"".join(pending) if first == 0 else b""
                    end = int(after[stop - 1])
                    yield Run(
                        frame_start if first == 0 else offset + begin,
                        begin_line,
                        head + chunk[begin:end] if head else chunk[begin:end],
                        (next_lines[first:stop] - begin_line).tolist(),
                        (after[first:stop] - begin + len(head)).tolist(),
                    )
                pos, line = int(after[stop - 1]), int(next_lines[stop - 1])
                if first == 0:
                    pending, size, too_large = [], 0, False
            frame_start, frame_line = offset + pos, line
            rest = chunk[pos:]
        else:
            rest = chunk
        if rest and not too_large:
            size += len(rest)
            if size > max_bytes:
                too_large, pending = True, []
                if stop_when_too_large:
                    yield Run(frame_start, frame_line, None, [1], [0])
                    return
            else:
                pending.append(rest)
        offset += len(chunk)
        newlines_before += newlines
        quotes_before += quotes
    if pending or too_large:  # the last record has no record-ending newline after it
        # Lines it spans: one per newline in it, plus the last one unless a newline ends the file.
        lines = first_line + newlines_before - frame_line + (not newline_last)
        data = None if too_large else b"".join(pending)
        yield Run(frame_start, frame_line, data, [lines], [0 if data is None else len(data)])


def _runs_between(over: list[int], count: int) -> Iterator[tuple[int, int]]:
    """Frame index ranges ``[first, stop)`` of the frames within the limit, and ``(i, i)`` for
    each frame ``i`` over it, in order."""
    first = 0
    for big in over:
        if big > first:
            yield first, big
        yield big, big
        first = big + 1
    if first < count:
        yield first, count


def record_starts(chunks: Iterable[bytes], targets: list[int]) -> list[tuple[int, int]]:
    """For each offset in ``targets`` (ascending), the first record start at or after it.

    ``chunks`` is a whole file from its first byte (the quote parity depends on every byte
    before). Returns ``(offset, 1-based line)`` pairs, one per target that has a record start
    after it, from one vectorised pass that stops as soon as the last target is placed.
    """
    found: list[tuple[int, int]] = []
    offset, newlines_before, quotes_before = 0, 0, 0
    for chunk in chunks:
        if len(found) == len(targets):
            break
        ends, index, newlines, quotes = _record_ends(chunk, quotes_before)
        starts = offset + ends + 1
        lines = newlines_before + index + 2  # the line after the (index+1)-th newline
        while len(found) < len(targets):
            k = int(np.searchsorted(starts, targets[len(found)]))
            if k == len(starts):
                break
            found.append((int(starts[k]), int(lines[k])))
        offset += len(chunk)
        newlines_before += newlines
        quotes_before += quotes
    return found
