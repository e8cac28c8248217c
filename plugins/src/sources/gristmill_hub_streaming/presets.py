"""Named datasets people start from, with their Hub location and defaults."""

from __future__ import annotations

from typing import Any

from gristmill.plugin.components import PresetType
from gristmill.plugin.manager import get_manager
from gristmill_hub_streaming.source import HubSource

PRESETS = (
    PresetType(
        name="fineweb",
        description="FineWeb, 15T tokens of deduplicated web text (the 10B-token sample)",
        source="hub:HuggingFaceFW/fineweb:sample-10BT",
        tokenizer="hf:gpt2",
        requires="hub",
    ),
    PresetType(
        name="fineweb-edu",
        description="FineWeb-Edu, web text filtered for educational value (the 10B-token sample)",
        source="hub:HuggingFaceFW/fineweb-edu:sample-10BT",
        tokenizer="hf:gpt2",
        requires="hub",
    ),
    PresetType(
        name="the-pile",
        description="The Pile without its copyrighted parts (monology/pile-uncopyrighted)",
        source="hub:monology/pile-uncopyrighted",
        tokenizer="hf:EleutherAI/gpt-neox-20b",
        requires="hub",
    ),
    PresetType(
        name="tiny-shakespeare",
        description="Tiny Shakespeare, 1 MB of plays, character level (nanoGPT's shakespeare_char)",
        source="hub:karpathy/tiny_shakespeare@refs/convert/parquet",
        tokenizer="byte",
        streaming=False,
        requires="hub",
    ),
    PresetType(
        name="shakespeare",
        description="Tiny Shakespeare with the GPT-2 tokenizer (nanoGPT's shakespeare)",
        source="hub:karpathy/tiny_shakespeare@refs/convert/parquet",
        tokenizer="hf:gpt2",
        streaming=False,
        requires="hub",
    ),
)


def open_preset(spec: str, **options: Any) -> HubSource:
    """``preset:NAME`` → the preset's Hub source."""
    preset = get_manager().preset(spec.removeprefix("preset:"))
    return HubSource(preset.source, streaming=preset.streaming, **options)
