"""Datasets on disk: prepare (tasks, merge, the claim on the output), the manifest and its
integrity checks, verify and convert."""
