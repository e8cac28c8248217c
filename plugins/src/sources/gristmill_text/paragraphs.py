"""Gathering a text file's lines into paragraphs: runs of lines that are not blank.

A block of text that decoded whole is cut by one regular expression, each paragraph a slice of
it; a block read line by line (a line that cannot be read, or line deduplication) goes a line at
a time. Both keep the paragraph under way in one :class:`Paragraphs`, so a paragraph may run on
from a block of either kind into the next.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gristmill.plugin.components import Rejected, Where
from gristmill_text.cleaning import SeenLines

# A run of lines each holding a character that is not whitespace (what str.isspace calls
# whitespace, as the line-by-line reading judges a blank line).
PARAGRAPH = re.compile(r"^.*\S.*(?:\n.*\S.*)*", re.MULTILINE)
Item = Any  # a record with its Where, or a Rejected


class Paragraphs:
    """The paragraphs of one piece, read block by block (see :meth:`read`).

    What is known of the paragraph under way beyond its text (``kept``: lines, or slices of a
    block that hold several): its first line once known (else it is the first kept line's), the
    UTF-8 size of what it keeps once it runs on past a block, and why it is rejected (it then
    keeps nothing): for its first line that cannot be read, else for its size. The reason never
    depends on where the file's reads end, so pieces give the whole's.
    """

    def __init__(self, spec: str, limit: int, too_large: Callable[[str, int], Rejected]):
        self.spec, self.limit, self.too_large = spec, limit, too_large
        self.kept: list[str] = []
        self.clear()

    def clear(self) -> None:
        self.kept.clear()
        self.first = 0
        self.counted, self.nbytes = 0, 0  # nbytes: of the first `counted` kept pieces
        self.problem: Rejected | None = None  # its first line that cannot be read
        self.oversize = False

    def read(
        self,
        blocks: Iterator[tuple[int, str | list[str | Rejected]]],
        seen: SeenLines | None,
        counts: Counter[str],
    ) -> Iterator[Item]:
        """Every paragraph of ``blocks`` (each the number of its first line, and its text or
        its lines), as a record or a rejection."""
        end = 1  # one past the last line read, where it is needed: after lines read one by one
        for start, block in blocks:
            if isinstance(block, str) and seen is None:
                yield from self._from_text(block, start)  # what it keeps has its first line set
            else:
                lines = block.split("\n") if isinstance(block, str) else block
                yield from self._from_lines(lines, start, seen, counts)
                end = start + len(lines)
            if self.kept:  # a paragraph that runs on past a block: its size so far
                self.check_size(end - 1)
        if (self.kept or self.first) and (item := self.close(end - len(self.kept))):
            yield item

    def _from_text(self, text: str, start: int) -> Iterator[Item]:
        """The paragraphs of a block decoded whole: slices of it, found at once. The one under
        way goes on only if the block's first line is not blank; one that reaches the block's
        last line is kept open, to go on in the next block."""
        pos = 0  # where the paragraphs of this block start
        if self.kept or self.first:
            found = PARAGRAPH.match(text)
            if found is not None:  # it goes on into this block
                self.start(start - len(self.kept))
                self.kept.append(found.group())
                pos = found.end()
                if pos == len(text):
                    return
            if item := self.close(start - len(self.kept)):
                yield item
        spec, size, count, quarter = self.spec, len(text), text.count, self.limit // 4
        number = start + count("\n", 0, pos)  # of the line at pos
        for found in PARAGRAPH.finditer(text, pos):
            begin, stop = found.span()
            number += count("\n", pos, begin)
            pos = begin
            if stop == size:  # it may go on in the next block
                self.start(number)
                self.kept.append(text[begin:])
                return
            if stop - begin > quarter:  # may be more bytes than the limit
                yield self._record(text[begin:stop], number)
            else:
                yield {"text": text[begin:stop]}, Where(spec, number)

    def _from_lines(
        self,
        lines: Sequence[str | Rejected],
        start: int,
        seen: SeenLines | None,
        counts: Counter[str],
    ) -> Iterator[Item]:
        kept = self.kept
        for number, line in enumerate(lines, start):
            if isinstance(line, str) and line and not line.isspace():
                if seen is not None:
                    self.start(number)  # its first line may not be kept
                    if seen.repeats(line):
                        counts["duplicate-line"] += 1
                        continue
                kept.append(line)
            elif not isinstance(line, str):
                self.start(number - len(kept))
                self.problem = self.problem or _in_paragraph(line, self.first)
                kept.clear()
            elif (kept or self.first) and (item := self.close(number - len(kept))):
                yield item

    def start(self, number: int) -> None:
        self.first = self.first or number

    def check_size(self, number: int) -> None:
        """Counts the bytes of what is kept so far (``number``: the last line read); past the
        limit the paragraph is too large, and what it kept is dropped."""
        if not self.oversize:
            if not self.counted and sum(map(len, self.kept)) * 4 <= self.limit:
                return  # small enough in any encoding: not worth encoding
            self.nbytes += sum(len(piece.encode()) + 1 for piece in self.kept[self.counted :])
            self.counted = len(self.kept)
            if self.nbytes - 1 <= self.limit:
                return
            self.start(number - len(self.kept) + 1)
            self.oversize = True
        self.kept.clear()

    def close(self, first_kept: int) -> Item | None:
        """The paragraph under way as a record, or why not (``None`` when every line was a
        repeat, each counted as such); then the next starts empty. ``first_kept``: its first
        line when it was not set (every kept piece is then one line)."""
        first = self.first or first_kept
        item: Item | None = self.problem
        if item is None and self.kept and not self.oversize:
            item = self._record("\n".join(self.kept), first)
        elif item is None and self.oversize:
            item = self.too_large("paragraph", first)
        self.clear()
        return item

    def _record(self, text: str, first: int) -> Item:
        if len(text) * 4 > self.limit and len(text.encode()) > self.limit:
            return self.too_large("paragraph", first)
        return {"text": text}, Where(self.spec, first)


def _in_paragraph(problem: Rejected, first: int) -> Rejected:
    """A line's problem, said of the paragraph it belongs to."""
    return problem._replace(message=f"{problem.message} (in the paragraph from line {first})")
