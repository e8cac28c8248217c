"""The error policy: stop at the first bad record (``fail``), or count and set it aside (``skip``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from gristmill.errors import DataError
from gristmill.options import ERROR_POLICIES
from gristmill.plugin.components import PassedOver, Rejected, Where


class ErrorPolicy:
    """``rejects``: the file skipped records go to (``None``: count them only)."""

    def __init__(self, mode: str, rejects: Path | None):
        if mode not in ERROR_POLICIES:
            raise DataError(f"on_error must be one of {', '.join(ERROR_POLICIES)}, got {mode!r}")
        self.mode = mode
        self.path = rejects
        self.counts: Counter[str] = Counter()
        self.passed: Counter[str] = Counter()  # units a source left out on purpose, per reason
        self._tmp = (
            None if rejects is None else rejects.with_name(f"{rejects.name}.tmp-{os.getpid()}")
        )
        self._file: IO[str] | None = None

    def reject(self, rejected: Rejected) -> None:
        """A record that cannot be used: raise (fail) or count and write it to the reject file."""
        if self.mode == "fail":
            raise DataError(rejected.message, where=str(rejected.where), field=rejected.field)
        self.counts[rejected.reason] += rejected.rows
        if self._tmp is None:
            return
        if self._file is None:
            # Kept open across calls; closed by close() or abort().
            self._file = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        entry = {
            "where": str(rejected.where),
            "reason": rejected.reason,
            "field": rejected.field,
            "message": rejected.message,
            "raw": rejected.raw,
            "rows": rejected.rows,
        }
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def pass_over(self, passed: PassedOver) -> None:
        """Units a source left out on purpose (blank, repeated): counted whatever the mode."""
        self.passed[passed.reason] += passed.rows

    def passed_over(self) -> dict[str, int]:
        """The units sources left out on purpose, per reason."""
        return dict(sorted(self.passed.items()))

    def source_failed(self, error: DataError) -> None:
        """A source that cannot go on (truncated archive…): raise, or count it and move on."""
        if self.mode == "fail":
            raise error
        self.reject(Rejected("unreadable-rest", error.reason, Where(error.where or "?")))

    def handle(self, problem: Rejected | DataError) -> None:
        """A rejected record, or a source that cannot go on."""
        if isinstance(problem, DataError):
            self.source_failed(problem)
        else:
            self.reject(problem)

    def close(self) -> dict[str, int]:
        """Publish the reject file (or remove a stale one); return the counts per reason."""
        if self._file is not None:
            self._file.close()
            os.replace(self._tmp, self.path)  # type: ignore[arg-type]
        elif self.path is not None and self.path.exists():
            self.path.unlink()
        return dict(sorted(self.counts.items()))

    def abort(self) -> None:
        """Drop the half-written reject file of a run that failed."""
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)  # type: ignore[union-attr]

    def summary(self) -> str:
        where = f"; see {self.path}" if self.path is not None else ""
        return describe_skips(self.counts) + where


def describe_skips(counts: Mapping[str, int]) -> str:
    """``skipped N record(s) (reason: n, ...)``."""
    reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items()))
    return f"skipped {sum(counts.values()):,} record(s) ({reasons})"


def describe_passed(counts: Mapping[str, int]) -> str:
    """``N unit(s) left out on purpose (reason: n, ...)``."""
    reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items()))
    return f"{sum(counts.values()):,} unit(s) left out on purpose ({reasons})"
