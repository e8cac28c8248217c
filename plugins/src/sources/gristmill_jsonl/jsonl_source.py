"""``jsonl``: one JSON object per line; splits into line-aligned byte ranges."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from gristmill.plugin.components import Rejected, Where
from gristmill.plugin.files import LineSource, lines


class JsonlSource(LineSource):
    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected]:
        start, end, first_line = self.byte_range
        for raw, index in lines(self.spec, max_bytes=self.max_record_bytes, start=start, end=end):
            where = Where(self.spec, first_line + index)
            if raw is None:
                yield Rejected(
                    "too-large",
                    f"the line is longer than {self.max_record_bytes:,} bytes; raise "
                    "--max-record-bytes if such records are expected",
                    where,
                )
                continue
            if not raw or raw.isspace():  # a blank line (isspace: no copy of a long one)
                continue
            yield parse_json_line(raw.rstrip(b"\r"), where, first=where.line == 1)


def parse_json_line(raw: bytes, where: Where, *, first: bool) -> tuple[Any, Where] | Rejected:
    """One JSON value from one line, or why not.

    orjson parses the line (faster than the standard parser); anything it refuses goes to the
    standard parser, which explains malformed lines precisely and accepts what orjson does not
    (a BOM, NaN, lone surrogates, numbers past 64 bits). A value holding a float is parsed again
    by the standard parser too: orjson reads an integer past 64 bits as a float, silently.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        try:
            if not _has_float(value):
                return value, where
        except RecursionError:
            pass  # nested deeper than Python recurses: the standard parser says so below
    try:
        # utf-8-sig on the first line: editors on Windows start files with a BOM.
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(
            "not-utf8",
            f"not UTF-8 (byte {exc.start + 1} of the line); re-encode the file as UTF-8",
            where,
            raw.decode("utf-8", errors="replace"),
        )
    try:
        return json.loads(line), where
    except json.JSONDecodeError as exc:
        return Rejected(
            "malformed-json", f"malformed JSON at column {exc.colno}: {exc.msg}", where, line
        )
    except (RecursionError, ValueError) as exc:  # valid JSON that Python cannot hold
        return Rejected("malformed-json", unreadable(exc), where, line)


def unreadable(exc: RecursionError | ValueError) -> str:
    """Why JSON the parser accepts still cannot become Python values."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read (arrays or objects about 1,000 levels deep)"
    # Python refuses to convert longer digit strings to int (CVE-2020-10735).
    return (
        f"a JSON number too long to read (more than {sys.get_int_max_str_digits():,} digits); "
        "write it as a string"
    )


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        return any(map(_has_float, value.values()))
    if kind is list:
        return any(map(_has_float, value))
    return False
