"""Old names of first-party plugins, still accepted by ``GRISTMILL_DISABLE_PLUGINS`` and
``GRISTMILL_PLUGINS`` for one release.

A first-party plugin is named after what it provides: its main component (the first it
registers), or, for a family of peers with no main one, the family (``fields``). Scripts and job
files that block or allow plugins by an older name keep working, with a ``DeprecationWarning``
naming the new one.
"""

from __future__ import annotations

import warnings

RENAMED = {
    "hub-streaming": "hub",
    "hf-tokenizers": "hf",
    "none-packer": "none",
    "random-sampler": "random",
    "length-grouped": "distributed-length-grouped",
    "local-executor": "local",
    "ray-executor": "ray",
}


def current(names: set[str]) -> set[str]:
    """``names`` with every old plugin name replaced by its new one, warning for each."""
    for old in sorted(names & RENAMED.keys()):
        warnings.warn(
            f"the plugin {old!r} is now named {RENAMED[old]!r}; the old name stops working in "
            "the next release",
            DeprecationWarning,
            stacklevel=2,
        )
    return {RENAMED.get(name, name) for name in names}
