"""Statistics the manifest keeps: document length percentiles and counts per metadata value."""

from __future__ import annotations

import json

import numpy as np


class MetadataStats:
    """Documents and tokens per value of each metadata key (``{"metadata": {"lang": "en"}}``).

    At most ``MAX_VALUES`` distinct values are kept per key; the rest count as ``(other)``, so a
    per-record id in the metadata cannot grow the manifest without bound.
    """

    MAX_VALUES = 100
    OTHER = "(other)"

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, list[int]]] = {}

    def add(self, key: str, value: object, documents: int, tokens: int) -> None:
        values = self.counts.setdefault(key, {})
        label = json.dumps(value) if not isinstance(value, str) else value
        if label not in values and len(values) >= self.MAX_VALUES:
            label = self.OTHER
        entry = values.setdefault(label, [0, 0])
        entry[0] += documents
        entry[1] += tokens

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            key: {v: {"documents": d, "tokens": t} for v, (d, t) in sorted(values.items())}
            for key, values in sorted(self.counts.items())
        }


def length_stats(lengths: np.ndarray) -> dict[str, float | int]:
    if not len(lengths):
        return dict.fromkeys(("min", "max", "mean", "p50", "p90", "p99"), 0)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {
        "min": int(lengths.min()),
        "max": int(lengths.max()),
        "mean": round(float(lengths.mean()), 2),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }
