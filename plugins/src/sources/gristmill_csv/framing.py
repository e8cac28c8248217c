"""Cutting CSV bytes into records: a newline ends a record iff an even number of quotes precede it.

RFC 4180 quotes every field that holds a newline and doubles the quotes inside a quoted field, so
the running count of ``"`` bytes since a record's start is odd exactly inside quoted fields. That
rule keeps one bit of state instead of a parser's, so it runs as array operations over each chunk
(no Python loop over bytes), and it finds the same boundaries from any record start.

One quote too many or too few flips that bit for the rest of the file, and every later record
would be framed wrong. So a record that spans several lines is only trusted when ``check`` (the
reader's parser) says it is one row; otherwise only its first line, the one whose quote never
closed properly, is set aside (a frame that is ``set_aside``) and framing starts again at the next
line. A record over ``max_bytes`` that spans lines is set aside the same way.

The reader frames records with :func:`runs`, and ``split`` cuts byte ranges at the starts it
yields: framing from any record start depends only on the bytes after it, so each piece frames
exactly the records a reader of the whole file sees there, which keeps pieces disjoint and line
numbers right whatever the task size.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import NamedTuple

import numpy as np

QUOTE, NEWLINE = ord('"'), ord("\n")

# Records spanning lines, joined (each with its newline, but for the last of a file), and the line
# each ends on (counted from 1, cumulative): the index of the first that is not one well-formed
# row, or None. The flag says whether the first record starts the file.
Check = Callable[[bytes, list[int], bool], "int | None"]
CHECKED = 256  # records spanning lines checked at once: one parser call, little wasted
# The source's bytes again from an absolute offset, for bytes that went by without being kept.
Reopen = Callable[[int], Iterable[bytes]]


class Frame(NamedTuple):
    """One record's bytes as framed by quote parity (a blank line is a frame too)."""

    start: int  # byte offset in the (decompressed) file
    line: int  # 1-based physical line where it starts
    lines: int  # physical lines it spans
    data: bytes | None  # with the newline that ends it, if any; None when over the size limit
    set_aside: bool = False  # a line whose quote ran on into lines that are not one row


class Run(NamedTuple):
    """Consecutive frames read in one go, so that one csv reader can parse them all.

    ``data`` is their bytes, each frame with the newline that ends it (the last frame of a file
    may have none); ``line_ends[i]`` and ``byte_ends[i]`` are where frame ``i`` ends, in lines
    and bytes from the start of the run. ``data`` is None for a single frame over the size limit.
    A run that is ``set_aside`` is one such line (see the module docstring); its ``data`` is
    None when the line alone is over the size limit.
    """

    start: int
    line: int
    data: bytes | None
    line_ends: list[int]
    byte_ends: list[int]
    set_aside: bool = False

    def frames(self) -> Iterator[Frame]:
        """The run's frames one by one."""
        line, byte = 0, 0
        for line_end, byte_end in zip(self.line_ends, self.byte_ends):
            data = None if self.data is None else self.data[byte:byte_end]
            yield Frame(self.start + byte, self.line + line, line_end - line, data, self.set_aside)
            line, byte = line_end, byte_end


def runs(
    chunks: Iterable[bytes],
    *,
    max_bytes: int,
    start: int = 0,
    first_line: int = 1,
    stop_when_too_large: bool = False,
    check: Check | None = None,
    reopen: Reopen | None = None,
) -> Generator[Run, None, None]:
    """Every record of a byte stream that begins at a record boundary (offset ``start``).

    Yields a run of frames per chunk, and a frame longer than ``max_bytes`` on its own with
    ``data=None``: its bytes are counted and dropped as they stream past, never held, so a file
    with no newline at all still reads in bounded memory. ``stop_when_too_large`` ends the stream
    at such a frame instead of reading on to its end (the header reader has no use for the rest).
    With ``check`` (and ``reopen``, to read dropped bytes again), records that span lines and are
    not one well-formed row lose their first line and framing goes on from the next one.
    """
    framer = _Framer(max_bytes, start, first_line, stop_when_too_large, check, reopen)
    return framer.runs(chunks)


class _Replay:
    """A chunk iterator that bytes can be pushed back onto, to frame them again."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._back: list[bytes] = []

    def push(self, data: bytes) -> None:
        if data:
            self._back.append(data)

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> bytes:
        return self._back.pop() if self._back else next(self._chunks)


class _Chunk:
    """One chunk's newlines, and per quote parity the newlines that end a record in it."""

    def __init__(self, chunk: bytes, max_bytes: int):
        data = np.frombuffer(chunk, dtype=np.uint8)
        self.bytes = chunk
        self.newlines = np.flatnonzero(data == NEWLINE)
        self.quotes = np.flatnonzero(data == QUOTE)
        # Parity of the chunk's quotes before each newline: a frame that starts after newline j
        # ends at the next newline of the same parity.
        self.parity = (np.searchsorted(self.quotes, self.newlines) & 1).astype(np.int8)
        self.max_bytes = max_bytes
        self._classes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def ends(self, parity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Newline indices of that parity, and the positions among them of the frames that
        span several lines and of those over the limit, when each starts after the one before."""
        if parity not in self._classes:
            ends = np.flatnonzero(self.parity == parity)
            long = np.flatnonzero(np.diff(ends) > 1) + 1
            sizes = np.diff(self.newlines[ends])
            large = np.flatnonzero(sizes > self.max_bytes + 1) + 1  # + 1: the newline
            self._classes[parity] = (ends, long, large)
        return self._classes[parity]

    def quotes_from(self, pos: int) -> int:
        return len(self.quotes) - int(np.searchsorted(self.quotes, pos))


class _Span(NamedTuple):
    """Frames of one chunk that end at newlines ``ends[m:]``: the first starts at byte ``pos``
    after newline ``k - 1``, or, when ``carried``, began in an earlier chunk."""

    chunk: _Chunk
    ends: np.ndarray
    m: int
    k: int
    pos: int
    carried: bool

    def end(self, i: int) -> int:
        """Chunk position after frame ``i``'s newline."""
        return int(self.chunk.newlines[self.ends[i]]) + 1

    def first_newline(self, i: int) -> int:
        """Newline index of the end of frame ``i``'s first line (within this chunk)."""
        if i > self.m:
            return int(self.ends[i - 1]) + 1
        return 0 if self.carried else self.k


class _Framer:
    """The state of :func:`runs`: where the current frame started and what of it was read."""

    def __init__(
        self,
        max_bytes: int,
        start: int,
        first_line: int,
        stop_when_too_large: bool,
        check: Check | None,
        reopen: Reopen | None,
    ):
        self.max_bytes = max_bytes
        self.stop_when_too_large = stop_when_too_large
        if check is not None and reopen is None:
            raise ValueError("check needs reopen: a line set aside may have to be read again")
        self.check = check
        self.reopen = reopen
        self.newline_last = False  # whether the last byte read is a newline
        self._restart(start, first_line)

    def _restart(self, offset: int, line: int) -> None:
        """Frame afresh from ``offset``, the start of physical line ``line``."""
        self.offset, self.line = offset, line  # where the next chunk starts
        self._new_frame(offset, line)

    def _new_frame(self, start: int, line: int) -> None:
        self.frame_start, self.frame_line = start, line
        self.pending: list[bytes] = []  # the start of a frame that continues into the next chunk
        self.size = 0
        self.too_large = False
        self.odd = 0  # parity of the quotes in the frame so far
        self.second: int | None = None  # where the frame's second line starts, once known
        self.first: bytes | None = None  # its first line, kept when the rest is dropped

    def runs(self, chunks: Iterable[bytes]) -> Generator[Run, None, None]:
        self.source = _Replay(chunks)
        while True:
            chunk = next(self.source, None)
            if chunk is None:
                if not (self.pending or self.too_large) or not (yield from self._last_frame()):
                    return
            elif chunk:
                self.newline_last = chunk[-1] == NEWLINE
                if (yield from self._frame_chunk(_Chunk(chunk, self.max_bytes))):
                    return

    # --- one chunk ---------------------------------------------------------------------------

    def _frame_chunk(self, chunk: _Chunk) -> Generator[Run, None, bool]:
        """Yield the chunk's complete frames; keep the start of the one it leaves open.

        Returns True when the stream must end (a frame over the limit, with
        ``stop_when_too_large``).
        """
        k, pos, carried, parity = 0, 0, True, self.odd
        while True:
            ends, long, large = chunk.ends(parity)
            m = int(np.searchsorted(ends, k))
            if m == len(ends):
                break
            span = _Span(chunk, ends, m, k, pos, carried)
            first = m  # the first frame of the run being gathered
            rewind = None
            while (trouble := self._next_trouble(span, first, long, large)) is not None:
                s, kind = trouble
                if s > first:
                    yield self._run(span, first, s)
                first = s + 1
                if kind == "aside":
                    rewind = yield from self._set_aside(span, s)
                    break
                start, line = self._frame_at(span, s)
                yield Run(start, line, None, [self.line + int(ends[s]) + 1 - line], [0])
                if self.stop_when_too_large:
                    return True
            if rewind is not None and rewind < 0:  # framing starts again before this chunk
                return False
            if rewind is None:
                if first < len(ends):
                    yield self._run(span, first, len(ends))
                k = int(ends[-1]) + 1
            else:  # again from the line after the one set aside, with its own quote parity
                k, parity = rewind, int(chunk.parity[rewind - 1])
            pos, carried = int(chunk.newlines[k - 1]) + 1, False
            if rewind is None:
                break
        if self._keep_rest(chunk, k, pos, carried):
            yield Run(self.frame_start, self.frame_line, None, [1], [0])
            return True
        return False

    def _next_trouble(
        self, span: _Span, i: int, long: np.ndarray, large: np.ndarray
    ) -> tuple[int, str] | None:
        """The first frame from ``i`` on that is over the limit ("large") or to be set aside
        ("aside"), or None. Frame ``m``, which may have begun earlier, is looked at alone; the
        others that span lines are checked in batches."""
        if i == span.m:
            kind = self._trouble(span, i)
            if kind is not None:
                return i, kind
            i += 1
        at = int(np.searchsorted(large, i))
        stop = int(large[at]) if at < len(large) else len(span.ends)
        if self.check is not None:
            spanning = long[np.searchsorted(long, i) : np.searchsorted(long, stop)]
            for j in range(0, len(spanning), CHECKED):
                bad = self._check_batch(span, spanning[j : j + CHECKED])
                if bad is not None:
                    return bad, "aside"
        if stop == len(span.ends):
            return None
        multi = self.check is not None and span.ends[stop] - span.ends[stop - 1] > 1
        return stop, "aside" if multi else "large"

    def _frame_at(self, span: _Span, i: int) -> tuple[int, int]:
        """Where frame ``i`` of the span starts: byte offset and line."""
        if i > span.m:
            after = int(span.ends[i - 1])
            return self.offset + int(span.chunk.newlines[after]) + 1, self.line + after + 1
        if span.carried:
            return self.frame_start, self.frame_line
        return self.offset + span.pos, self.line + span.k

    def _check_batch(self, span: _Span, batch: np.ndarray) -> int | None:
        """The first of frames ``batch`` (each after frame ``m``) that is not one row, or None."""
        assert self.check is not None
        newlines, ends = span.chunk.newlines, span.ends
        begins = (newlines[ends[batch - 1]] + 1).tolist()
        stops = (newlines[ends[batch]] + 1).tolist()
        data = b"".join([span.chunk.bytes[a:b] for a, b in zip(begins, stops)])
        line_ends = np.cumsum(ends[batch] - ends[batch - 1]).tolist()
        bad = self.check(data, line_ends, False)
        return None if bad is None else int(batch[bad])

    def _check_one(self, data: bytes, lines: int, start: int) -> bool:
        """Whether one record spanning ``lines`` lines is one row."""
        assert self.check is not None
        return self.check(data, [lines], start == 0) is None

    def _trouble(self, span: _Span, i: int) -> str | None:
        """What frame ``i`` needs: "large" when over the limit on one line (or when nothing
        is set aside), "aside" when its first line is set aside, None when it reads."""
        start, line = self._frame_at(span, i)
        lines = self.line + int(span.ends[i]) + 1 - line
        large = (span.carried and i == span.m and self.too_large) or (
            self.offset + span.end(i) - start > self.max_bytes + 1  # + 1: the newline
        )
        if lines == 1 or self.check is None:
            return "large" if large else None
        if large or not self._check_one(self._bytes(span, i, span.end(i)), lines, start):
            return "aside"
        return None

    def _bytes(self, span: _Span, i: int, end: int) -> bytes:
        """Frame ``i``'s bytes up to chunk position ``end`` (kept bytes only)."""
        if i > span.m:
            return span.chunk.bytes[span.end(i - 1) : end]
        if span.carried:
            return b"".join(self.pending) + span.chunk.bytes[:end]
        return span.chunk.bytes[span.pos : end]

    def _run(self, span: _Span, first: int, stop: int) -> Run:
        """Frames ``[first, stop)`` of the span as one run."""
        start, line = self._frame_at(span, first)
        data = self._bytes(span, first, span.end(stop - 1))
        line_ends = span.ends[first:stop] + (self.line + 1 - line)
        byte_ends = span.chunk.newlines[span.ends[first:stop]] + (self.offset + 1 - start)
        return Run(start, line, data, line_ends.tolist(), byte_ends.tolist())

    def _set_aside(self, span: _Span, s: int) -> Generator[Run, None, int]:
        """Yield frame ``s``'s first line, set aside. Returns the newline index to frame on
        from, or -1 when that line began before this chunk and framing starts again there."""
        start, line = self._frame_at(span, s)
        if s == span.m and span.carried and self.second is not None:  # began in an earlier chunk
            yield from self._set_aside_before(start, line, span.chunk.bytes)
            return -1
        newline = span.first_newline(s)
        end = int(span.chunk.newlines[newline]) + 1
        dropped = s == span.m and span.carried and self.too_large  # its first line is over it
        yield self._aside(start, line, None if dropped else self._bytes(span, s, end))
        self._new_frame(self.offset + end, line + 1)
        return newline + 1

    def _aside(self, start: int, line: int, data: bytes | None) -> Run:
        """A run of one line set aside; its text only when within the limit."""
        if data is not None and len(data.removesuffix(b"\n")) > self.max_bytes:
            data = None
        return Run(start, line, data, [1], [0 if data is None else len(data)], set_aside=True)

    def _set_aside_before(self, start: int, line: int, chunk: bytes = b"") -> Iterator[Run]:
        """Set aside the first line of a frame whose second line began before ``chunk`` (the
        chunk being framed, if any), and frame again from that second line: from the bytes kept,
        or read again when they were dropped."""
        second = self.second
        assert second is not None
        if self.too_large:
            assert self.reopen is not None
            yield self._aside(start, line, self.first)
            self.source = _Replay(self.reopen(second))
        else:
            head = b"".join(self.pending)
            cut = second - self.frame_start
            yield self._aside(start, line, head[:cut])
            self.source.push(chunk)
            self.source.push(head[cut:])
        self._restart(second, line + 1)

    def _keep_rest(self, chunk: _Chunk, k: int, pos: int, carried: bool) -> bool:
        """Keep the open frame's bytes from this chunk (drop them once over the limit).

        Returns True when the stream must end (over the limit, with ``stop_when_too_large``).
        """
        rest = chunk.bytes if carried else chunk.bytes[pos:]
        if carried:
            self.odd ^= len(chunk.quotes) & 1
        else:
            self._new_frame(self.offset + pos, self.line + k)
            self.odd = chunk.quotes_from(pos) & 1
        if self.second is None and k < len(chunk.newlines):
            self.second = self.offset + int(chunk.newlines[k]) + 1
        if rest and not self.too_large:
            self.size += len(rest)
            if self.size > self.max_bytes:
                if self.second is not None:
                    # Its first line, should it be set aside: kept while within the limit.
                    head = b"".join([*self.pending, rest])
                    self.first = head[: self.second - self.frame_start]
                self.too_large, self.pending = True, []
            else:
                self.pending.append(rest)
        self.offset += len(chunk.bytes)
        self.line += len(chunk.newlines)
        return self.too_large and self.stop_when_too_large

    # --- the end of the stream ---------------------------------------------------------------

    def _last_frame(self) -> Generator[Run, None, bool]:
        """The record after the last record-ending newline. Returns True when framing goes on
        (its first line was set aside and the lines after it are to be framed again)."""
        # Lines it spans: one per newline in it, plus the last one unless a newline ends the file.
        lines = self.line - self.frame_line + (not self.newline_last)
        data = None if self.too_large else b"".join(self.pending)
        start, line = self.frame_start, self.frame_line
        if not self._last_set_aside(data, lines):
            yield Run(start, line, data, [lines], [0 if data is None else len(data)])
            return False
        if lines > 1:
            yield from self._set_aside_before(start, line)
            return True
        yield self._aside(start, line, self.first if data is None else data)
        return False

    def _last_set_aside(self, data: bytes | None, lines: int) -> bool:
        """Whether the last record loses its first line: a quote still open at the end of the
        file, or lines that do not make one row."""
        if self.check is None:
            return False
        if self.odd:
            return True
        return lines > 1 and (data is None or not self._check_one(data, lines, self.frame_start))


def frame_starts(framed: Iterable[Run], targets: list[int]) -> list[tuple[int, int]]:
    """For each offset in ``targets`` (ascending), the first frame start at or after it.

    ``framed`` frames a whole source from a record start (the quote parity and the lines set
    aside depend on every byte before). Returns ``(offset, 1-based line)`` pairs, one per target
    that has a frame start after it, and stops reading once the last target is placed.
    """
    found: list[tuple[int, int]] = []
    for run in framed:
        # The run's frames start at run.start and after each of its frames but the last.
        while len(found) < len(targets):
            target = targets[len(found)]
            if target <= run.start:
                found.append((run.start, run.line))
                continue
            j = bisect.bisect_left(run.byte_ends, target - run.start)
            if j >= len(run.byte_ends) - 1:
                break
            found.append((run.start + run.byte_ends[j], run.line + run.line_ends[j]))
        if len(found) == len(targets):
            break
    return found
