"""A plugin whose import fails, as when a native dependency is missing."""

raise ImportError("libfake.so: cannot open shared object file")
