"""Cutting a plain text file into byte ranges at paragraph boundaries, in one pass."""

from __future__ import annotations

import os
import re

from gristmill.plugin.files import CHUNK, chunks

# A line of ASCII whitespace alone, with the newline before it: a cut at its start parts two
# paragraphs. Lines of other whitespace are blank too, and the reader treats them so; leaving
# them out here only gives fewer places to cut, never a cut inside a paragraph.
BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
SPACES = b" \t\r\f\v"


def paragraph_ranges(path: str, pieces: int) -> list[tuple[int, int, int]]:
    """Split a plain file into at most ``pieces`` ``(start, end, first_line)`` byte ranges, each
    cut at the start of a blank line, so that no paragraph is cut; ``first_line`` is the 1-based
    number of each range's first line.

    Each cut moves forward from its share of the size to the next blank line; a share that holds
    none joins the next. Memory stays bounded: only the whitespace after the last newline of a
    chunk is carried to the next, and not when it is longer than a chunk (a cut lost there only
    leaves a larger range).
    """
    size = os.path.getsize(path)
    if pieces <= 1 or size == 0:
        return [(0, size, 1)]
    targets = [size * k // pieces for k in range(1, pieces)]
    starts = [(0, 1)]  # (offset, number) of each range's first line
    base, newlines = 0, 0  # of the buffer: where it starts, newlines before it
    carry = b""
    for chunk in chunks(path):
        buffer = carry + chunk if carry else chunk
        while targets:
            # The blank line must start at or after the target: its newline at target - 1 or on.
            found = BLANK_LINE.search(buffer, max(targets[0] - 1 - base, 0))
            if found is None:
                break
            begin = base + found.start() + 1
            if starts[-1][0] < begin < size:
                starts.append((begin, newlines + buffer.count(b"\n", 0, found.start() + 1) + 1))
            targets.pop(0)
        last = buffer.rfind(b"\n")
        keep = last >= 0 and len(buffer) - last <= CHUNK and not buffer[last + 1 :].strip(SPACES)
        cut = last if keep else len(buffer)
        newlines += buffer.count(b"\n", 0, cut)
        base += cut
        carry = buffer[cut:]
    ends = [begin for begin, _ in starts[1:]] + [size]
    return [(begin, end, first) for (begin, first), end in zip(starts, ends)]
