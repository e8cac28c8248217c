"""Datasets on object storage and web servers (``s3://``, ``gs://``, ``https://``, any fsspec
filesystem), read through a local mirror in gristmill's cache folder.

:func:`open_mirror` makes the mirror of a URL (its manifest fetched afresh); a shard format's
reader finds it with :func:`mirror_of` and fetches each file at its first read
(:meth:`Mirror.fetch`, or :func:`local_file`). Importing this package imports no fsspec: that
waits for the first remote path.
"""

from gristmill.plugin.remote.evict import EvictionPolicy, LeastRecentlyUsed, NextUse
from gristmill.plugin.remote.mirror import (
    CACHE_LIMIT_VARIABLE,
    Mirror,
    local_file,
    mirror_of,
    open_mirror,
)
from gristmill.plugin.remote.urls import is_remote, local_path, redacted

__all__ = [
    "CACHE_LIMIT_VARIABLE",
    "EvictionPolicy",
    "LeastRecentlyUsed",
    "Mirror",
    "NextUse",
    "is_remote",
    "local_file",
    "local_path",
    "mirror_of",
    "open_mirror",
    "redacted",
]
