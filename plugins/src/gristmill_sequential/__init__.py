"""The ``sequential`` sampler: every sample once, in index order, on a single process."""

from __future__ import annotations

from typing import Any

from gristmill import hookimpl
from gristmill.components import SamplerType
from gristmill.errors import GristmillError


def sequential(
    num_samples: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, **options: Any
) -> range:
    # Splitting an ordered pass across ranks is the distributed sampler's job; doing it here
    # silently would hand every rank the whole epoch.
    if world_size != 1:
        raise GristmillError(
            "the sequential sampler serves one process; use the distributed sampler for "
            f"{world_size} ranks"
        )
    if options:
        raise GristmillError(f"the sequential sampler takes no options, got {sorted(options)}")
    return range(num_samples)


@hookimpl
def gristmill_samplers() -> list[SamplerType]:
    return [
        SamplerType(
            name="sequential",
            description="every sample once, in index order (one process)",
            factory=sequential,
        )
    ]
