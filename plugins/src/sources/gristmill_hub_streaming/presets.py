"""Named datasets people start from, with their Hub location and defaults."""

from __future__ import annotations

from gristmill.plugin.components import PresetType

DESCRIPTIONS = {
    "fineweb": "FineWeb, 15T tokens of deduplicated web text (the 10B-token sample)",
    "fineweb-edu": "FineWeb-Edu, web text filtered for educational value (the 10B-token sample)",
    "the-pile": "The Pile without its copyrighted parts (monology/pile-uncopyrighted)",
    "pile": "The Pile, as the-pile (the name training guides use)",
    "tiny-shakespeare": "Tiny Shakespeare, 1 MB of plays, character level (nanoGPT's "
    "shakespeare_char); also tiny_shakespeare",
    "shakespeare": "The complete works of Shakespeare (Project Gutenberg's text), line by line, "
    "with the GPT-2 tokenizer; blank lines are passed over",
}
TINY_SHAKESPEARE = "hub:karpathy/tiny_shakespeare@refs/convert/parquet"
# One plain-text file of the complete works: datasets' text builder reads it one row per line.
COMPLETE_WORKS = "hub:lyimo/shakespear"
PILE = "hub:monology/pile-uncopyrighted"


def _hub(name: str, source: str, tokenizer: str, *, streaming: bool = True) -> PresetType:
    return PresetType(
        name=name,
        description=DESCRIPTIONS[name],
        source=source,
        tokenizer=tokenizer,
        streaming=streaming,
        requires="hub",
    )


PRESETS = (
    _hub("fineweb", "hub:HuggingFaceFW/fineweb:sample-10BT", "hf:gpt2"),
    _hub("fineweb-edu", "hub:HuggingFaceFW/fineweb-edu:sample-10BT", "hf:gpt2"),
    _hub("the-pile", PILE, "hf:EleutherAI/gpt-neox-20b"),
    _hub("pile", PILE, "hf:EleutherAI/gpt-neox-20b"),
    _hub("tiny-shakespeare", TINY_SHAKESPEARE, "byte", streaming=False),
    _hub("shakespeare", COMPLETE_WORKS, "hf:gpt2", streaming=False),
)
