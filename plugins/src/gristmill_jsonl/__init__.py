"""The ``jsonl`` source: one JSON object per line of a ``.jsonl`` / ``.ndjson`` file."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from gristmill import hookimpl
from gristmill.components import SourceType, Where
from gristmill.errors import DataError


class JsonlSource:
    def __init__(self, spec: str):
        self.spec = spec

    def records(self) -> Iterator[tuple[dict[str, Any], Where]]:
        with open(self.spec, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = Where(self.spec, number)
                try:
                    # utf-8-sig on the first line: editors on Windows start files with a BOM.
                    line = raw.rstrip(b"\r\n").decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"not UTF-8 (byte {exc.start + 1} of the line); re-encode the file as UTF-8",
                        where=str(where),
                    ) from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"malformed JSON at column {exc.colno}: {exc.msg}", where=str(where)
                    ) from None
                yield record, where

    def fingerprint(self) -> str:
        # The content, not the path or mtime: moving or touching a file keeps its dataset valid.
        digest = hashlib.sha256()
        with open(self.spec, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="jsonl",
            description="JSON Lines files: one JSON object per line",
            suffixes=(".jsonl", ".ndjson"),
            factory=JsonlSource,
        )
    ]
