"""Cutting the input into units of work, from the sources' sizes alone.

Three words, each with one meaning throughout gristmill:

- a **part** is what a source's ``split()`` returns: a source of its own over a share of the
  input (a byte range of a text file, row groups of a Parquet file); a source too small to cut
  is its own one part;
- a **chunk** is a run of consecutive parts of about a given number of bytes, read as one unit
  (:class:`Chunk`): ``prepare`` runs one task per chunk of ``task_bytes``, and the task writes
  its own shards; ``stream`` reads a chunk of ``chunk_bytes`` in one worker;
- a **piece** belongs to streams alone: a run of consecutive chunks packed on its own (see
  :mod:`gristmill.serve.stream`).

The plan never depends on the number of workers or ranks, so neither does anything built from it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gristmill.plugin.components import HasSize, Source

UNSIZED_PARTS = 64  # a source that cannot tell its size splits this finely, as far as it can


@dataclass(frozen=True)
class Chunk:
    """A run of parts read as one unit; ``index``: its place in the plan (a task's number)."""

    index: int
    parts: tuple[tuple[int, Source], ...]  # (position of the source in the run, a part of it)


def plan_chunks(
    sources: Iterable[tuple[int, Source]], chunk_bytes: int, unread: Collection[int] = ()
) -> list[Chunk]:
    """Cut sources into parts of about ``chunk_bytes`` and group small neighbours into chunks.

    Sources at the positions in ``unread`` (refused by the schema check) stay whole and weigh
    nothing: the chunk that reaches one reports it, in input order, and is no smaller for it.
    """
    weighted: list[tuple[int, Source, int]] = []
    for position, source in sources:
        if position in unread:
            weighted.append((position, source, 0))
            continue
        size = source_size(source)
        wanted = UNSIZED_PARTS if size is None else -(-size // chunk_bytes)
        parts = source.split(wanted) if wanted > 1 else [source]
        weight = chunk_bytes if size is None else max(1, size // len(parts))
        weighted += [(position, part, weight) for part in parts]
    return [
        Chunk(index, tuple((weighted[i][0], weighted[i][1]) for i in group))
        for index, group in enumerate(_grouped([w for _, _, w in weighted], chunk_bytes))
    ]


def planned_chunks(sources: Iterable[Source], chunk_bytes: int) -> int | None:
    """How many chunks :func:`plan_chunks` makes of ``sources`` (none refused), from their sizes
    alone: nothing is read or split. At least as many, when a source splits into fewer parts than
    it is asked for; ``None`` when a source cannot tell its size."""
    weights: list[int] = []
    for source in sources:
        size = source_size(source)
        if size is None:
            return None
        parts = max(1, -(-size // chunk_bytes))
        weights += [max(1, size // parts)] * parts
    return len(_grouped(weights, chunk_bytes))


def _grouped(weights: list[int], chunk_bytes: int) -> list[list[int]]:
    """Consecutive parts (by index) grouped into chunks of at most ``chunk_bytes`` of weight, or
    one part alone when it weighs more."""
    groups: list[list[int]] = []
    filled = 0
    for index, weight in enumerate(weights):
        # A weightless part joins the chunk under way, and the next part joins a chunk of them.
        if not groups or (filled and weight and filled + weight > chunk_bytes):
            groups.append([])
            filled = 0
        groups[-1].append(index)
        filled += weight
    return groups


def source_size(source: Source) -> int | None:
    """Bytes of input: the source's ``nbytes()`` when it has one, else its file's size."""
    if isinstance(source, HasSize):
        return int(source.nbytes())
    return os.path.getsize(source.spec) if os.path.isfile(source.spec) else None
