"""The names of a dataset directory's files and folders, and of what prepare writes beside it.

The lowest layer: sources refuse a dataset directory given as input by these names, the write
side creates them, the read side opens them.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
INCOMPLETE = ".gristmill-incomplete"  # present while prepare is writing; removed after the manifest
FORMAT = "gristmill-dataset"
FORMAT_VERSION = 1
TASKS_DIR = ".gristmill-tasks"  # prepare's tasks' records and side files, until the merge
PLANS_DIR = ".gristmill-plans"  # pack plans, cached beside the shards; safe to delete
TOKENIZER_DIR = "tokenizer"  # the dataset's own copy of its tokenizer
METADATA_DIR = "metadata"  # the documents' metadata: a folder of values per split, string tables
INDEX_DIR = "index"  # every split's shard offsets in one file (store.index)
REJECTS = ".rejects.jsonl"


def reject_file(out: Path) -> Path:
    """Where skipped records go: ``OUT.rejects.jsonl`` beside the output ``OUT``."""
    return out.with_name(f"{out.name}{REJECTS}")
