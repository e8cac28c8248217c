"""Reading shards: check every file against the manifest, map a shard when it is first read,
and hash each file against the manifest's SHA-256 before its first bytes are used."""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gristmill.errors import DatasetError
from gristmill.layout import MANIFEST
from gristmill.plugin.integrity import check_open_file
from gristmill.plugin.remote import mirror_of

MAX_MAPPED = 8192  # three mappings a shard: well under Linux's default 65,530 per process


class Shard(NamedTuple):
    """A mapped shard: its arrays, and its tokens and mask as bytes (slicing a ``memoryview``
    costs a fifth of slicing an array)."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None
    token_bytes: memoryview
    mask_bytes: memoryview | None
    bounds: memoryview | np.ndarray  # the offsets, read as Python ints where a memoryview


class MemmapShardReader:
    """Opening touches no shard file, so 10,000 shards open as fast as a few: a shard's files
    are checked at its first read, before any of their bytes are used (each inside the dataset
    with the manifest's size, and the manifest still the file it was at open: a dataset
    prepared again meanwhile is refused, never served).

    Mapping waits for a shard's first read, and only recently read shards stay mapped:
    Python's ``mmap`` keeps a file descriptor per mapped file, so mapping every shard of a large
    dataset at once would run out of them (the usual soft limit is 1,024 per process).

    Every file is checked against the manifest's SHA-256 when it is first opened, before any of
    its bytes are used (:mod:`gristmill.plugin.integrity`: hashed once per machine, stamped
    after): the offsets when ``lengths()`` reads them for packing, a shard's files when it is
    first mapped.
    A flipped byte that still reads as a valid id, mask or offset is refused, never served.
    """

    def __init__(self, directory: Path, shards: Sequence[dict[str, Any]], *, dtype: np.dtype):
        self.root = Path(directory).resolve()
        self._inside = os.path.join(self.root, "")  # the root with a trailing separator
        self._dtype = np.dtype(dtype).newbyteorder("<")
        self._folders: dict[str, str] = {}
        self._listed = list(shards)
        # Every shard's files, checked at its first read (see _checked): a ``stat`` a file at
        # open would cost more than the rest of opening a dataset of many shards.
        self._files: list[tuple[str, str, str | None] | None] = [None] * len(self._listed)
        self._manifest = _manifest_identity(self.root)  # the dataset as it was opened
        # A remote dataset's mirror, which fetches each file before it is first checked.
        self._mirror = mirror_of(self.root)
        self._identity: dict[str, tuple[int, ...]] = {}  # every file as it was checked
        self._entries: dict[str, dict[str, Any]] = {}  # every file's manifest entry
        self._counts: list[tuple[int, int]] = []
        for k, shard in enumerate(shards):
            problem = _entry_problem(shard)
            if problem is not None:
                raise DatasetError(
                    f"the shard {k} of the split {problem}; the manifest was edited or damaged: "
                    f"run `gristmill verify {self.root}`, or prepare the dataset again",
                    where=str(self.root / MANIFEST),
                )
            self._counts.append((shard["num_tokens"], shard["num_documents"]))
        counts = np.fromiter((docs for _, docs in self._counts), np.int64, len(self._counts))
        self._first_doc = np.concatenate([[0], np.cumsum(counts)])
        self._starts = self._first_doc.tolist()  # bisect on a list: no numpy call per document
        self.num_documents = int(self._first_doc[-1])
        # Where every document begins in its shard, filled in as a shard is mapped (memory is
        # only touched where it is), so that ``spans`` finds a batch's begins in one gather.
        self._begins = np.empty(self.num_documents, np.int64)
        self._max_mapped = mapped_limit()
        # A remote dataset with a cache limit: the bytes of the shards kept mapped, which the
        # mirror may not drop (pinned, ``_pins``), stay within a quarter of the room its limit
        # leaves for shards, the rest for the files fetched ahead and other processes' reads.
        room = None if self._mirror is None else self._mirror.room()
        self._mapped_room = None if room is None else max(room, 0) // 4
        self._mapped_bytes = 0
        self._pins: dict[int, list[int | None]] = {}  # by shard, while it is mapped
        weakref.finalize(self, _unpin_all, self._pins)  # a reader gone releases its pins
        # Every shard's arrays while it is mapped, read without the lock (a list item is read
        # whole, and a shard unmapped meanwhile stays alive for whoever holds its arrays).
        self._live: list[Shard | None] = [None] * len(self._files)
        # Which shards stay mapped is the clock's choice, an approximation of least recently
        # read: a read only sets its shard's bit, and mapping a shard past the limit unmaps the
        # first mapped shard the hand finds unread since it last passed.
        self._read = bytearray(len(self._files))
        self._ring: list[int] = []  # the mapped shards, in the hand's order
        self._hand = 0
        self._lock = threading.Lock()  # mapping and unmapping stay safe from several threads

    def _checked(self, k: int) -> tuple[str, str, str | None]:
        """Shard ``k``'s files' real paths, checked when first asked for: the dataset is still
        the one opened (its manifest the same file, not one written by ``prepare`` since), and
        each file lies inside it, with the size the manifest gives."""
        files = self._files[k]
        if files is not None:
            return files
        self._same_manifest()
        shard = self._listed[k]
        (tokens, docs), mask = self._counts[k], shard.get("mask")
        files = self._files[k] = (
            self._check(shard["tokens"], tokens * self._dtype.itemsize),
            self._check(shard["offsets"], (docs + 1) * 8),
            None if mask is None else self._check(mask, tokens),
        )
        return files

    def _same_manifest(self) -> None:
        """Refuse to read on once the manifest is another file than the one opened."""
        if _manifest_identity(self.root) != self._manifest:
            raise DatasetError(
                f"the dataset changed since it was opened ({MANIFEST} was replaced or removed: "
                "prepared again?); open it again",
                where=str(self.root),
            )

    def _offsets_file(self, k: int) -> str:
        """Shard ``k``'s offsets file's real path, checked as :meth:`_checked` checks it (the
        shard's other files are not fetched from a remote dataset for this)."""
        files = self._files[k]
        if files is not None:
            return files[1]
        self._same_manifest()
        return self._check(self._listed[k]["offsets"], (self._counts[k][1] + 1) * 8)

    def _check(self, entry: dict[str, Any], expected: int) -> str:
        """The file's real path, once it is known to lie inside the dataset with the size the
        manifest gives. A plain file in a folder already resolved costs one ``lstat``."""
        if self._mirror is not None:
            self._mirror.fetch(entry)  # a remote dataset's file is fetched at its first read
        folder_name, _, name = entry["path"].rpartition("/")
        folder = self._folders.get(folder_name)
        if folder is None:
            folder = self._folders[folder_name] = os.path.realpath(self.root / folder_name)
        path = os.path.join(folder, name)
        try:
            info: os.stat_result | None = os.lstat(path)
        except OSError:
            info = None
        if info is None or stat.S_ISLNK(info.st_mode) or name in ("", ".", ".."):
            # Not a plain file name: resolve the whole path, links included, as it is used.
            path = os.path.realpath(self.root / entry["path"])
            info = os.stat(path) if os.path.exists(path) else None
        if not (path.startswith(self._inside) or path == str(self.root)):
            raise DatasetError(f"{self.root}: manifest path {entry['path']!r} leaves the dataset")
        if info is None and self._mirror is not None:  # dropped again since: fetched again
            fd = self._mirror.open(entry)
            info = os.fstat(fd)
            os.close(fd)
        if info is None or not stat.S_ISREG(info.st_mode):
            raise DatasetError(f"{path}: shard file is missing")
        if info.st_size != expected or entry["bytes"] != expected:
            raise DatasetError(
                f"{path}: {info.st_size} bytes on disk, manifest expects {expected} "
                "(truncated or replaced shard; run `gristmill prepare` again)"
            )
        self._identity[path] = _identity(info)
        self._entries[path] = entry
        return path

    def _open(self, path: str) -> int:
        """A descriptor of the file checked at open, never of one put in its place since (a
        dataset prepared again into the same directory): that is refused, so that no reader
        serves samples of two generations. Its content is the manifest's (SHA-256); a remote
        dataset's copy that is not (damaged in the mirror since it landed) is fetched again."""
        for last in (self._mirror is None, True):
            fd, info = self._descriptor(path)
            try:
                check_open_file(fd, self._entries[path], dataset=self.root, info=info)
            except DatasetError:
                os.close(fd)
                if last:
                    raise
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # the mirror's copy: the next descriptor is of a new one
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise AssertionError("unreachable")  # the last round returns or raises

    def _descriptor(self, path: str) -> tuple[int, os.stat_result]:
        """A descriptor of the file at ``path`` and its ``fstat``, refused unless it is the
        file checked at open. A remote dataset's mirror may have dropped it for room and
        fetched it again since (its content is the manifest's, as before): the dataset is
        then refused only once its manifest changed."""
        if self._mirror is not None:
            fd = self._mirror.open(self._entries[path])
            if _manifest_identity(self.root) == self._manifest:
                info = os.fstat(fd)
                self._identity[path] = _identity(info)
                return fd, info
            os.close(fd)
        else:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                info = os.fstat(fd)
                if _identity(info) == self._identity[path]:
                    return fd, info
                os.close(fd)
        where = os.path.relpath(path, self.root)
        raise DatasetError(
            f"the dataset changed since it was opened ({where} was replaced or removed: "
            "prepared again?); open it again",
            where=str(self.root),
        )

    def _shard(self, k: int) -> Shard:
        """Shard ``k``'s arrays, mapped now if they are not."""
        shard = self._live[k]
        if shard is None:
            with self._lock:
                shard = self._live[k] or self._map(k)  # or mapped by another thread meanwhile
        self._read[k] = 1
        return shard

    def _shards(self, ks: Sequence[int]) -> list[Shard]:
        """These shards' arrays, mapped now if they are not (a document already served keeps
        its own mapping alive when its shard is unmapped)."""
        return [self._shard(k) for k in ks]

    def _map(self, k: int) -> Shard:
        """Map shard ``k`` (under the lock), unmapping others first where too many are mapped
        (or, from a mirror with a limit, too many bytes). A mirror's files stay pinned while
        they are mapped, so that it drops none that this process holds on disk."""
        size = sum(int(entry["bytes"]) for entry in self.shard_files(k))
        self._unmap_for(size)
        if self._mirror is not None:
            self._pins[k] = [self._mirror.pin(entry) for entry in self.shard_files(k)]
        try:
            (tokens, offsets, mask), (count, docs) = self._checked(k), self._counts[k]
            if self._mirror is not None:  # read now: the last a full mirror drops
                for entry in self.shard_files(k):
                    self._mirror.used(entry["path"])
            shard = _map_shard(self._open, tokens, offsets, mask, self._dtype, count, docs)
        except BaseException:
            self._unpin(k)
            raise
        self._begins[self._starts[k] : self._starts[k + 1]] = shard.offsets[:-1]
        self._ring.insert(self._hand, k)
        self._hand = (self._hand + 1) % len(self._ring)
        self._mapped_bytes += size
        self._live[k] = shard
        return shard

    def _unmap_for(self, size: int) -> None:
        """Unmap shards, the clock's choice, until one more (of ``size`` bytes) fits."""
        ring, room = self._ring, self._mapped_room
        while ring and (
            len(ring) >= self._max_mapped or (room is not None and self._mapped_bytes + size > room)
        ):
            hand = self._hand % len(ring)
            while self._read[ring[hand]]:  # a second chance for every shard read since
                self._read[ring[hand]] = 0
                hand = (hand + 1) % len(ring)
            k = ring.pop(hand)
            self._hand = hand if hand < len(ring) else 0
            self._live[k] = None
            self._mapped_bytes -= sum(int(entry["bytes"]) for entry in self.shard_files(k))
            self._unpin(k)

    def _unpin(self, k: int) -> None:
        if self._mirror is not None:
            for pin in self._pins.pop(k, ()):
                self._mirror.unpin(pin)

    def shards_of(self, docs: np.ndarray) -> np.ndarray:
        """The shard (its index in the split) that holds each of ``docs``: what a loader's
        timeline of the files it reads is made of."""
        return self._first_doc.searchsorted(np.asarray(docs, np.int64), "right") - 1

    def shard_files(self, k: int) -> list[dict[str, Any]]:
        """The manifest entries of shard ``k``'s files, which its first read fetches from a
        remote dataset (tokens, offsets, and the mask where it has one)."""
        shard = self._listed[k]
        return [shard[key] for key in ("tokens", "offsets", "mask") if shard.get(key)]

    def lengths(self) -> np.ndarray:
        """Every document's token count; refuses an index that does not tile its shard."""
        if not self._listed:
            return np.zeros(0, np.int64)
        # Read, not mapped, so that no descriptor outlives the call; one diff for every shard.
        offsets = np.concatenate(
            [
                _read(self._open(self._offsets_file(k)), docs + 1)
                for k, (_, docs) in enumerate(self._counts)
            ]
        )
        last = np.cumsum([docs + 1 for _, docs in self._counts]) - 1  # every shard's final offset
        first = last - [docs for _, docs in self._counts]
        steps = np.diff(offsets)
        steps[last[:-1]] = 0  # from one shard's final offset to the next shard's first
        tokens = np.fromiter((count for count, _ in self._counts), np.int64, len(self._counts))
        if (offsets[first] != 0).any() or (offsets[last] != tokens).any() or (steps < 0).any():
            self._refuse_index(offsets, first, last)
        return np.delete(steps, last[:-1]).astype(np.int64)

    def _refuse_index(self, offsets: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:
        """Name the first shard whose offsets do not start at 0, go back, or end short of or
        past its tokens: packing or reading such an index would serve the wrong tokens."""
        for k, (lo, hi) in enumerate(zip(first.tolist(), last.tolist())):
            shard = offsets[lo : hi + 1]
            tokens, _ = self._counts[k]
            back = np.flatnonzero(np.diff(shard) < 0)
            if shard[0] != 0:
                problem = f"the first offset is {shard[0]}, not 0"
            elif len(back):
                at = int(back[0])
                problem = f"offsets go back from {shard[at]} to {shard[at + 1]} (document {at})"
            elif shard[-1] != tokens:
                problem = f"the last offset is {shard[-1]} but the shard has {tokens} tokens"
            else:
                continue
            where = os.path.relpath(self._offsets_file(k), self.root)
            raise DatasetError(f"{where}: {problem}; run `gristmill verify {self.root}`")

    def document(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if not 0 <= index < self.num_documents:
            raise IndexError(f"document {index} out of range for {self.num_documents} documents")
        k = bisect.bisect_right(self._starts, index) - 1
        shard = self._shard(k)
        bounds, j = shard.bounds, index - self._starts[k]
        start, end = bounds[j], bounds[j + 1]
        mask = shard.mask
        return shard.tokens[start:end], None if mask is None else mask[start:end]

    def spans(
        self, docs: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens ``starts[k]`` to ``starts[k] + lengths[k]`` of document ``docs[k]`` for every
        ``k``, concatenated, and their loss mask (``None`` when none of these shards has one).

        The index math is vectorised and every shard is looked up once a call; what is left per
        span is slicing a ``memoryview`` of its shard, a fifth of the cost of slicing an array,
        and ``join`` copies the slices out. (Each shard is its own mapping, so one index array
        cannot gather them all, and a gather index as long as the tokens costs more anyway.)
        """
        docs = np.asarray(docs, np.int64)
        if not len(docs):
            return np.zeros(0, self._dtype), None
        if docs.min() < 0 or docs.max() >= self.num_documents:
            index = int(docs[(docs < 0) | (docs >= self.num_documents)][0])
            raise IndexError(f"document {index} out of range for {self.num_documents} documents")
        shards = (self._first_doc.searchsorted(docs, "right") - 1).tolist()
        needed = list(dict.fromkeys(shards))
        mapped = dict(zip(needed, self._shards(needed)))  # their documents' begins known now
        begins = self._begins[docs] + np.asarray(starts, np.int64)
        ends = (begins + np.asarray(lengths, np.int64)).tolist()
        begins = begins.tolist()
        size = self._dtype.itemsize
        views = [mapped[k].token_bytes for k in shards]
        tokens = bytearray().join(
            [view[b * size : e * size] for view, b, e in zip(views, begins, ends)]
        )
        if all(shard.mask is None for shard in mapped.values()):
            return np.frombuffer(tokens, self._dtype), None
        masks = [mapped[k].mask_bytes for k in shards]
        mask = bytearray().join(
            [  # spans from shards without a mask: every token carries loss
                b"\x01" * (e - b) if view is None else view[b:e]
                for view, b, e in zip(masks, begins, ends)
            ]
        )
        return np.frombuffer(tokens, self._dtype), np.frombuffer(mask, np.uint8)


def _entry_problem(shard: dict[str, Any]) -> str | None:
    """What makes a shard entry (its counts checked with the manifest) unreadable as memmap
    shards, or contradict itself: a mask missing where not every token carries loss would train
    on the prompt."""
    for key in ("tokens", "offsets"):
        if not isinstance(shard.get(key), dict):
            return f"has no {key} file entry"
    mask = shard.get("mask")
    if mask is not None and not isinstance(mask, dict):
        return "has a mask that is neither a file entry nor null"
    if mask is None and shard["num_loss_tokens"] != shard["num_tokens"]:
        return (
            f"({shard['tokens']['path']}) has no mask, so all its {shard['num_tokens']} tokens "
            f"would carry loss, but its num_loss_tokens is {shard['num_loss_tokens']}"
        )
    return None


def mapped_limit() -> int:
    """Shards kept mapped at once: three descriptors each at most, in an eighth of the
    process's limit (the rest is the program's), and never more than ``MAX_MAPPED``."""
    try:
        import resource
    except ImportError:  # Windows: a mapping holds a handle, not one of the C runtime's 512
        return 1024
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_MAPPED if soft == resource.RLIM_INFINITY else max(16, min(MAX_MAPPED, soft // 8))


def _unpin_all(pins: dict[int, list[int | None]]) -> None:
    """Close the pin files' descriptors of a reader that is gone (which releases the pins)."""
    for fds in pins.values():
        for fd in fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
    pins.clear()


def _manifest_identity(root: Path) -> tuple[int, ...] | None:
    """The manifest file's identity (``None`` where there is none): ``prepare`` writes a new
    one, under a new name renamed into place, last."""
    try:
        return _identity(os.stat(root / MANIFEST))
    except FileNotFoundError:
        return None


def _identity(info: os.stat_result) -> tuple[int, ...]:
    """What tells a file from another put in its place: the inode may be reused once the old
    file is gone, its size and modification time with it hardly."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _read(fd: int, count: int) -> np.ndarray:
    """``count`` int64 from the file ``fd``, which is closed after."""
    # os.read: a third less than a file object, which adds up over 10,000 shards' offsets.
    try:
        return np.frombuffer(os.read(fd, 8 * count), "<i8", count=count)
    finally:
        os.close(fd)


def _map_shard(
    open_file: Callable[[str], int],
    tokens: str,
    offsets: str,
    mask: str | None,
    dtype: np.dtype,
    count: int,
    docs: int,
) -> Shard:
    """The shard's arrays, each file opened with ``open_file`` just before it is mapped."""
    token_array = _map(open_file(tokens), dtype, count)
    offset_array = _map(open_file(offsets), np.dtype("<i8"), docs + 1)
    mask_array = None if mask is None else _map(open_file(mask), np.dtype("u1"), count)
    return Shard(
        token_array,
        offset_array,
        mask_array,
        memoryview(token_array).cast("B"),
        None if mask_array is None else memoryview(mask_array),
        # A memoryview reads in the machine's byte order, the offsets are little-endian.
        memoryview(offset_array).cast("B").cast("q") if sys.byteorder == "little" else offset_array,
    )


def _map(fd: int, dtype: np.dtype, count: int) -> np.ndarray:
    """``count`` elements of the file ``fd``, mapped; the descriptor is closed."""
    # mmap and a plain ndarray over it: a third of np.memmap's cost to open (which matters once
    # shards are mapped again and again), and slicing skips its Python-level __getitem__.
    try:
        if count == 0:  # an empty file cannot be mapped
            return np.zeros(0, dtype=dtype)
        mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)  # mmap keeps its own duplicate
    return np.frombuffer(mapped, dtype=dtype, count=count)
