"""Fixtures of the storage tests."""

from __future__ import annotations

import os
from typing import Any

import pytest

from gristmill.plugin import integrity


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files hashed from now on, in order (the real hashing, counted)."""
    seen: list[str] = []
    real = integrity._hash

    def counting(fd: int, info: os.stat_result, entry: dict[str, Any], *args: Any) -> None:
        seen.append(entry["path"])
        real(fd, info, entry, *args)

    monkeypatch.setattr(integrity, "_hash", counting)
    return seen
