"""``hub-streaming``: Hugging Face datasets read with ``datasets.load_dataset(..., streaming=True)``.

Specs:

- ``hub:ORG/NAME[:CONFIG][@REVISION][#SPLIT]``: a Hub dataset, streamed (nothing is downloaded
  up front); ``SPLIT`` defaults to ``train``;
- ``hub:/path/to/folder`` or ``hub:./folder``: a local dataset folder (data files, a dataset card);
- ``hub:http://host/file.jsonl`` (or ``.json``, ``.csv``, ``.parquet``, ``.txt``): files served over
  HTTP;

and the presets ``gristmill presets`` lists (``preset:NAME``, which gristmill resolves to their
``hub:`` spec).

A source splits into contiguous runs of the dataset's data files (of Parquet row groups when
there are fewer files than pieces; of rows for a downloaded dataset), which gristmill deals to
prepare's tasks, ranks and DataLoader workers as it deals pieces of files: each piece is read
whole by whichever process gets it, never split again by ``datasets``. Remote code never runs:
datasets that need a loading script are refused by ``datasets`` itself.
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import PresetType, SourceType
from gristmill_hub_streaming.presets import PRESETS
from gristmill_hub_streaming.source import HubSource


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="hub",
            description="Hugging Face datasets, streamed: hub:ORG/NAME[:config][@rev][#split], "
            "hub:FOLDER, hub:http://…/file.jsonl",
            prefixes=("hub:",),
            factory=HubSource,
            requires="hub",
            options={"streaming": "false: download once, read from the local cache (default true)"},
        ),
    ]


@hookimpl
def gristmill_presets() -> list[PresetType]:
    return list(PRESETS)
