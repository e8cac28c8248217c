"""A loader's timeline of the shard files it reads, the eviction oracle made of it, and the
threads that fetch those files ahead of the reads, in that order.

A loader knows its whole epoch in advance (the schedule), so it knows which shard each step
reads: :class:`Timeline` holds those reads in order (read ``i`` is of shard ``shards[i]`` at
step ``steps[i]``), says when a file is needed next (Belady's rule needs no more,
:class:`~gristmill.plugin.remote.evict.NextUse`), and :class:`Prefetcher` fetches the next
shards' files while the current ones are read.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gristmill.plugin.remote.evict import NextUse
from gristmill.plugin.remote.mirror import Mirror

log = logging.getLogger("gristmill")

THREADS = 4  # downloads at once, at most: enough to keep a link busy with a few large files


class Timeline:
    """The reads of shard files in order: read ``i`` is of shard ``shards[i]`` at step
    ``steps[i]`` (non-decreasing), whose files ``files(shard)`` gives (manifest entries).
    ``now`` is the current step: :meth:`next_use` looks from there on, past the reads done of
    the steps being read (:meth:`reading`, :meth:`read`)."""

    def __init__(
        self,
        steps: np.ndarray,
        shards: np.ndarray,
        files: Callable[[int], Sequence[Mapping[str, Any]]],
    ):
        self.steps = np.asarray(steps, np.int64)
        self.shards = np.asarray(shards, np.int64)
        self.now = int(self.steps[0]) if len(self.steps) else 0
        self._until = self.now  # the steps being read end here
        self._done: dict[str, int] = {}  # a file's reads before this step are done
        self._files = files
        # The reads that start a run of reads of one shard: the ones that fetch.
        self.runs = np.flatnonzero(np.r_[True, self.shards[1:] != self.shards[:-1]])
        # Every shard's reads, their steps in order: by shard, then by step.
        order = np.lexsort((self.steps, self.shards))
        by_shard, at = self.shards[order], self.steps[order]
        cuts = np.flatnonzero(np.diff(by_shard)) + 1
        self._uses = dict(zip(by_shard[np.r_[0, cuts]].tolist(), np.split(at, cuts)))
        self._shard_of = {
            str(entry["path"]): shard for shard in self._uses for entry in files(shard)
        }

    def __len__(self) -> int:
        return len(self.shards)

    def files(self, read: int) -> Sequence[Mapping[str, Any]]:
        """The manifest entries of the files of read ``read``."""
        return self._files(int(self.shards[read]))

    def first_run(self, step: int) -> int:
        """The first run (an index in ``runs``) that starts at step ``step`` or later."""
        return int(np.searchsorted(self.steps[self.runs], step, "left"))

    def reading(self, start: int, stop: int) -> None:
        """Steps ``start`` to ``stop`` are read now, together (a loader's chunk): a file read
        meanwhile is not needed again before ``stop``."""
        self.now, self._until = start, stop

    def read(self, name: str) -> None:
        """The file ``name`` is read now (for the steps being read)."""
        self._done[name] = max(self._until, self.now + 1)

    def next_use(self, name: str) -> int | None:
        """The step of the next read of the file ``name`` (a path in the dataset) at the
        current step or later, and not done; ``None`` when the timeline does not read it
        again."""
        uses = self._uses.get(self._shard_of.get(name, -1))
        if uses is None:
            return None
        after = max(self.now, self._done.get(name, self.now))
        at = int(np.searchsorted(uses, after, "left"))
        return int(uses[at]) if at < len(uses) else None

    def oracle(self) -> NextUse:
        """Belady's rule over this timeline, for a mirror's ``policy``."""
        return NextUse(self.next_use, self.read)


class Prefetcher:
    """Threads that fetch ``timeline``'s files into ``mirror`` in its order, the shards of the
    steps handed to the readers so far and ``ahead`` shards more (:meth:`advance`; a shard
    read at several steps in a row counts once).

    A fetch ahead drops no file needed sooner than the one it fetches (it waits for the reads
    to move on instead), so the mirror stays within its limit and Belady's rule keeps its
    minimum. A failed fetch is kept by the mirror and raised by the read that needs the file
    (:meth:`Mirror.fetch`); the files after it are fetched on. :meth:`close` stops the threads
    (a download under way finishes first).
    """

    def __init__(self, mirror: Mirror, timeline: Timeline, ahead: int):
        self.mirror, self.timeline, self.ahead = mirror, timeline, ahead
        # The runs to fetch: every run where files may be dropped, else (no limit: a file
        # that landed stays) only each shard's first, so that a warm cache costs no work.
        runs = timeline.runs
        if mirror.cache_limit is None:
            runs = np.sort(runs[np.unique(timeline.shards[runs], return_index=True)[1]])
        self._runs, self._run_steps = runs, timeline.steps[runs]
        self._next = self._first(timeline.now)  # the next run (in ``_runs``) to fetch
        self._end = self._next  # runs before it may be fetched now
        self._changed = threading.Condition()
        self._closed, self._stalled = False, 0  # threads waiting for room
        self._threads = [
            threading.Thread(target=self._run, name=f"gristmill-prefetch-{k}", daemon=True)
            for k in range(min(ahead, THREADS))
        ]
        for thread in self._threads:
            thread.start()

    def advance(self, dispatched: int) -> None:
        """The steps before ``dispatched`` are handed to the readers: fetch their reads and the
        next ``ahead`` shards' files."""
        with self._changed:
            end = min(self._first(dispatched) + self.ahead, len(self._runs))
            if self._stalled:  # the reads moved on: room, maybe, for a stalled fetch
                self._changed.notify_all()
            elif end > self._end:  # new work: wake as many threads as it needs, no more
                self._changed.notify(end - max(self._end, self._next))
            self._end = max(self._end, end)

    def _first(self, step: int) -> int:
        """The first run to fetch (an index in ``_runs``) read at step ``step`` or later."""
        return int(np.searchsorted(self._run_steps, step, "left"))

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _take(self) -> int | None:
        """The next run's first read, once the window reaches it; ``None`` once closed."""
        with self._changed:
            while not self._closed and self._next >= self._end:
                self._changed.wait()
            if self._closed:
                return None
            run, self._next = self._next, self._next + 1
            return int(self._runs[run])

    def _run(self) -> None:
        while (read := self._take()) is not None:
            for entry in self.timeline.files(read):
                while not self._closed and not self._fetch(entry, read):
                    with self._changed:  # no room yet without dropping what is needed sooner
                        self._stalled += 1
                        self._changed.wait(timeout=0.5)
                        self._stalled -= 1

    def _fetch(self, entry: Mapping[str, Any], read: int) -> bool:
        """Fetch one file ahead: ``False`` where it would drop a file needed sooner."""
        when = self.timeline.next_use(str(entry["path"]))
        try:
            return self.mirror.fetch_ahead(
                entry, int(self.timeline.steps[read]) if when is None else when
            )
        except Exception as error:  # kept by the mirror for the read that needs the file
            log.debug(f"prefetch of {entry['path']}: {error}")
            return True


def in_use(steps: np.ndarray, shards: np.ndarray, sizes: Mapping[int, int]) -> float:
    """The bytes of shards an order keeps in use at once, on average over its steps: each
    shard (``sizes``: its bytes) counts from the step of its first read to that of its last
    (``steps`` and ``shards``: the reads in order). A cache smaller than this downloads some
    shards again within the epoch, whatever it drops."""
    if not len(steps):
        return 0.0
    order = np.lexsort((steps, shards))
    by_shard, at = shards[order], steps[order]
    edges = np.flatnonzero(np.r_[True, by_shard[1:] != by_shard[:-1], True])
    first, last = at[edges[:-1]], at[edges[1:] - 1]
    size = np.array([sizes[int(k)] for k in by_shard[edges[:-1]]], np.float64)
    span = int(steps.max()) - int(steps.min()) + 1
    return float((size * (last - first + 1)).sum() / span)


def downloads(
    reads: Sequence[str], sizes: Mapping[str, int], room: int, *, belady: bool = True
) -> list[str]:
    """The files a mirror with ``room`` bytes for them downloads, in order, to serve the file
    reads ``reads`` (paths, in order; ``sizes`` their bytes): dropping the one read again
    furthest in the future (``belady``: the fewest downloads any policy can achieve), or the
    one least recently read. A simulation, from the reads alone (no server, no files)."""
    following: list[float] = [math.inf] * len(reads)  # each read's file's next read
    seen: dict[str, int] = {}
    for at in range(len(reads) - 1, -1, -1):
        following[at] = seen.get(reads[at], math.inf)
        seen[reads[at]] = at
    held: dict[str, float] = {}  # file -> its next read (Belady) or its last read (LRU)
    total, fetched = 0, []
    for at, name in enumerate(reads):
        if name not in held:
            fetched.append(name)
            while held and total + sizes[name] > room:
                victim = (
                    max(held, key=held.__getitem__) if belady else min(held, key=held.__getitem__)
                )
                total -= sizes[victim]
                del held[victim]
            total += sizes[name]
        held[name] = following[at] if belady else at
    return fetched
