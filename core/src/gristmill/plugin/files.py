"""Reading files as streams: transparent .gz/.zst decompression, bounded lines, byte ranges.

Shared by the text-based sources (JSON Lines, JSON, CSV). Everything streams in fixed-size chunks,
so memory stays bounded whatever the file size; a truncated or corrupt archive is a
:class:`~gristmill.errors.DataError` naming the file, never a silently shorter dataset.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from gristmill.errors import DataError, MissingDependencyError
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11 on

CHUNK = 1 << 20
FEED_GZ, FEED_ZSTD = 8 << 10, 256  # compressed bytes per call: at most ~8 MiB out
COMPRESSIONS = (".gz", ".zst")


def without_compression(name: str) -> str:
    """``data.jsonl.gz`` → ``data.jsonl``: the name a source claims by suffix."""
    lowered = name.lower()
    for suffix in COMPRESSIONS:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_compressed(path: str) -> bool:
    return without_compression(path) != path


HASH_READ = 1 << 20  # bytes hashed at a time: fits the caches


def content_hash(path: str) -> str:
    """SHA-256 of a file's bytes as stored (compressed files hash their compressed form)."""
    with open(path, "rb", buffering=0) as f:
        return sha256_of(f)[0]


def sha256_of(
    f: io.RawIOBase | io.BufferedIOBase, progress: Callable[[int], None] | None = None
) -> tuple[str, int]:
    """The SHA-256 (hex) and size of what ``f`` holds from where it stands to its end, read into
    one reused block; ``progress`` hears the size of each block."""
    digest = hashlib.sha256()
    # No larger than the file: zeroing a whole block for each of many small files costs more
    # than hashing them.
    left = os.fstat(f.fileno()).st_size - f.tell()
    block = memoryview(bytearray(max(1, min(HASH_READ, left))))
    total = 0
    while size := f.readinto(block):
        digest.update(block[:size])
        total += size
        if progress is not None:
            progress(size)
    return digest.hexdigest(), total


def _decompressor(path: str) -> Any:
    lowered = path.lower()
    if lowered.endswith(".gz"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        import zstandard
    except ImportError:
        raise MissingDependencyError(
            f"{path}: reading .zst files needs the zstandard package: pip install 'gristmill[zstd]'"
        ) from None
    return zstandard.ZstdDecompressor().decompressobj()


def chunks(path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The file's decompressed bytes in chunks; ``start``/``end`` select a byte range (plain files)."""
    with open(path, "rb") as f:
        if not is_compressed(path):
            f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
            return
        if start or end is not None:
            raise ValueError(f"{path}: byte ranges of compressed files are not supported")
        yield from _decompressed(path, f)


def _decompressed(path: str, f: BinaryIO) -> Iterator[bytes]:
    # Fed in small slices: each call's output is held whole, and a crafted or corrupt file
    # expands up to ~1,000× (gzip) or ~32,000× (zstd, a run of one byte) what it is fed.
    feed = FEED_GZ if path.lower().endswith(".gz") else FEED_ZSTD
    stream = _decompressor(path)
    finished = True  # an empty file holds zero members, which is not truncation
    member = members = 0  # where the current member starts; how many ended before it
    out: list[bytes] = []
    size = offset = 0  # offset: of the current read in the file
    try:
        while raw := f.read(CHUNK):
            view, pos = memoryview(raw), 0
            while pos < len(raw):
                finished = False
                piece = view[pos : pos + feed]
                pos += len(piece)
                if decoded := stream.decompress(piece):
                    out.append(decoded)
                    size += len(decoded)
                    if size >= CHUNK:  # pass on chunks of the usual size, not one per slice
                        yield out[0] if len(out) == 1 else b"".join(out)
                        out, size = [], 0
                if stream.eof:
                    # Concatenated members/frames (pigz, zstd --rsyncable…): start a fresh stream.
                    finished, pos = True, pos - len(stream.unused_data)
                    member, members = offset + pos, members + 1
                    stream = _decompressor(path)
            offset += len(raw)
    except Exception as exc:
        if not isinstance(exc, (zlib.error, ValueError)) and type(exc).__name__ != "ZstdError":
            raise
        damage: Exception | None = exc
    else:
        damage = None
    if out:
        yield b"".join(out)  # what came before the damage or the cut
    if damage is None and finished:
        return
    if members and not _starts_member(path, f, member):
        # Not called damage: every member so far ended cleanly. Still an error, not a note:
        # the bytes may be an appended archive whose start was damaged, and its records lost.
        trailing = os.fstat(f.fileno()).st_size - member
        raise DataError(
            f"{trailing:,} trailing bytes after the end of the compressed data (at byte "
            f"{member:,}) do not start another member: every record before them was read. If "
            f"they are padding, remove them (truncate -s {member} FILE); if another archive "
            "was appended there, its start is damaged",
            where=path,
        )
    if damage is not None:
        raise DataError(f"corrupt compressed data ({damage}); the file is damaged", where=path)
    raise DataError(
        "the compressed file ends early (truncated download or copy?); records before the "
        "cut were read, the rest is missing",
        where=path,
    )


# The first bytes of a gzip member; of a zstd frame, or one of the 16 skippable frames.
MAGIC = {
    ".gz": (b"\x1f\x8b",),
    ".zst": (b"\x28\xb5\x2f\xfd", *(bytes([0x50 + i, 0x2A, 0x4D, 0x18]) for i in range(16))),
}


def _starts_member(path: str, f: BinaryIO, at: int) -> bool:
    """Whether the bytes at ``at`` begin (or, cut short, could begin) a member."""
    f.seek(at)
    head = f.read(4)
    suffix = path[len(without_compression(path)) :].lower()
    return any(head[: len(magic)] == magic[: len(head)] for magic in MAGIC[suffix])


def lines(
    path: str, *, max_bytes: int, start: int = 0, end: int | None = None
) -> Iterator[tuple[bytes | None, int]]:
    """Each line (without its newline) and its 0-based index within the range.

    A line longer than ``max_bytes`` is yielded as ``None`` and skipped without being held in
    memory. With a byte range, the range owns the lines that start inside it.
    """
    pending: list[bytes] = []
    size = 0
    overlong = False
    index = 0
    for chunk in chunks(path, start, end):
        pos = 0
        while True:
            cut = chunk.find(b"\n", pos)
            if cut < 0:
                piece = chunk[pos:]
                if not overlong:
                    size += len(piece)
                    if size > max_bytes:
                        overlong, pending = True, []
                    elif piece:
                        pending.append(piece)
                break
            piece = chunk[pos:cut]
            if overlong or size + len(piece) > max_bytes:
                yield None, index
            else:
                yield b"".join([*pending, piece]), index
            index += 1
            pending, size, overlong = [], 0, False
            pos = cut + 1
    if overlong:
        yield None, index
    elif pending:
        yield b"".join(pending), index


def line_ranges(path: str, pieces: int) -> list[tuple[int, int, int]]:
    """Split a plain file into at most ``pieces`` ``(start, end, first_line)`` byte ranges.

    Each cut moves forward to the next line start, so no line is cut; ``first_line`` is the
    1-based number of each range's first line. One pass over the file in chunks: a line of any
    length streams past, never held whole.
    """
    size = os.path.getsize(path)
    if pieces <= 1 or size == 0:
        return [(0, size, 1)]
    targets = [size * k // pieces for k in range(1, pieces)]
    starts = [(0, 1)]  # (offset, number) of each range's first line
    offset, newlines = 0, 0  # of the current chunk: where it starts, newlines before it
    for chunk in chunks(path):
        while targets:
            # The line that straddles the target ends at the first newline from target - 1.
            look = max(targets[0] - 1 - offset, 0)
            cut = chunk.find(b"\n", look) if look < len(chunk) else -1
            if cut < 0:
                break
            begin = offset + cut + 1
            if starts[-1][0] < begin < size:
                starts.append((begin, newlines + chunk.count(b"\n", 0, cut + 1) + 1))
            targets.pop(0)
        newlines += chunk.count(b"\n")
        offset += len(chunk)
    ends = [begin for begin, _ in starts[1:]] + [size]
    return [(begin, end, first) for (begin, first), end in zip(starts, ends)]


class LineSource:
    """The part of a line-based source that is the same for every format: a file (plain,
    ``.gz`` or ``.zst``) or a byte range of one, split into line-aligned byte ranges of a plain
    file, fingerprinted by its content. A subclass writes ``records()``, reading
    ``lines(self.spec, max_bytes=self.max_record_bytes, start=..., end=...)`` over
    ``self.byte_range``; one that keeps more state than these also writes ``split``.
    """

    def __init__(
        self,
        spec: str,
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        byte_range: tuple[int, int | None, int] = (0, None, 1),
        **context: Any,  # what gristmill passes that a line-based source does not use
    ):
        self.spec = spec
        self.max_record_bytes = max_record_bytes
        self.byte_range = byte_range  # (start, end, number of the first line)

    def split(self, pieces: int) -> list[Self]:
        if is_compressed(self.spec) or self.byte_range != (0, None, 1):
            return [self]  # a compressed stream cannot seek; a piece is not split again
        return [
            type(self)(self.spec, max_record_bytes=self.max_record_bytes, byte_range=piece)
            for piece in line_ranges(self.spec, pieces)
        ]

    def fingerprint(self) -> str:
        return content_hash(self.spec)
