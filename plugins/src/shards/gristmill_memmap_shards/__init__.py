"""The ``memmap-shards`` format: token ids, document offsets and loss masks as raw arrays.

Per split directory, shard ``NNNNN`` is up to three little-endian files:

- ``NNNNN.tokens``: token ids, ``uint16`` or ``uint32`` (the manifest's ``dtype``);
- ``NNNNN.offsets``: ``int64``, one more than the shard's documents: document ``j`` is tokens
  ``offsets[j]:offsets[j+1]``; ``offsets[0] == 0`` and the last equals the token count;
- ``NNNNN.mask``: ``uint8`` per token, 1 where the token carries loss; absent when every token
  of the shard does.

Readers map the files with ``numpy.memmap``: opening costs O(number of shards).
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import ShardFormatType
from gristmill_memmap_shards.reader import MemmapShardReader
from gristmill_memmap_shards.verify import verify_shard
from gristmill_memmap_shards.writer import MemmapShardWriter


@hookimpl
def gristmill_shard_formats() -> list[ShardFormatType]:
    return [
        ShardFormatType(
            name="memmap-shards",
            description="raw token/offset/mask arrays per shard, opened with numpy.memmap",
            writer=MemmapShardWriter,
            reader=MemmapShardReader,
            verify=verify_shard,
        )
    ]
