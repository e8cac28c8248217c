"""tiktoken's ranks file format, read and written here, and what a vocabulary must hold.

A ranks file has one token a line: the token's bytes in base64, a space, and its rank (its id,
which is also its merge priority: lower merges first). Blank lines are skipped.

The file is parsed here rather than with ``tiktoken.load.load_tiktoken_bpe``: that function keeps
a copy of every file it reads in tiktoken's cache directory, keyed by the path alone, and returns
the copy the next time without comparing it with the file. A ranks file edited in place would
then be read as it was before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from pathlib import Path

from gristmill.errors import GristmillError

MAX_ID = 2**32 - 1  # tiktoken's ids are 32-bit; so are gristmill's token arrays


class TiktokenLoadError(GristmillError):
    """A tiktoken spec that cannot be loaded: no such file, a malformed file, not downloadable."""


def read_ranks(path: Path, spec: str) -> dict[bytes, int]:
    """The ranks in the file at ``path``; errors name ``spec`` and the file (and the line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TiktokenLoadError(f"{spec!r}: no such file: {path}") from None
    except IsADirectoryError:
        raise TiktokenLoadError(f"{spec!r}: {path} is a directory, not a ranks file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TiktokenLoadError(f"{spec!r}: cannot read {path}: {reason}") from None
    return parse_ranks(data, str(path))


def parse_ranks(data: bytes, origin: str) -> dict[bytes, int]:
    """The ranks in the bytes of a ranks file; ``origin`` names the file in errors."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError("two fields expected")
            token = base64.b64decode(fields[0], validate=True)
            rank = int(fields[1])
        except (ValueError, binascii.Error):
            shown = line[:80].decode("utf-8", "replace")
            raise TiktokenLoadError(
                f"{origin}:{number}: not a tiktoken ranks line (BASE64_TOKEN RANK): {shown!r}"
            ) from None
        if not token or not 0 <= rank <= MAX_ID:
            what = "an empty token" if not token else f"rank {rank} outside [0, {MAX_ID}]"
            raise TiktokenLoadError(f"{origin}:{number}: {what}")
        if token in ranks:
            raise TiktokenLoadError(
                f"{origin}:{number}: the token {token!r} is listed twice (ranks "
                f"{ranks[token]} and {rank})"
            )
        ranks[token] = rank
    check_ranks(ranks, origin)
    return ranks


def check_ranks(ranks: Mapping[bytes, int], origin: str) -> None:
    """Refuse what tiktoken would crash on (a Rust panic, not an exception) or encode lossily."""
    if not ranks:
        raise TiktokenLoadError(f"{origin}: holds no tokens")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        # Byte-level BPE starts from single bytes: a text holding a byte without a token could
        # not be encoded at all.
        raise TiktokenLoadError(
            f"{origin}: {len(missing)} of the 256 byte values have no token (the first is "
            f"0x{missing[0]:02x}); a byte-level BPE needs one for every byte"
        )
    if len(set(ranks.values())) != len(ranks):
        seen: dict[int, bytes] = {}
        for token, rank in ranks.items():
            if rank in seen:
                raise TiktokenLoadError(
                    f"{origin}: rank {rank} is given to two tokens, {seen[rank]!r} and {token!r}"
                )
            seen[rank] = token


def dump_ranks(ranks: Mapping[bytes, int]) -> bytes:
    """The ranks file for ``ranks``, lines in rank order: the same bytes for the same ranks."""
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ordered)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
