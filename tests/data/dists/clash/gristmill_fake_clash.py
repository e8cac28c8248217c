"""A plugin that registers a name a first-party plugin already has."""

from gristmill import hookimpl
from gristmill.plugin.components import SourceType


@hookimpl
def gristmill_sources():
    return [SourceType(name="jsonl", description="another jsonl reader", suffixes=(".jsonl",), factory=str)]
