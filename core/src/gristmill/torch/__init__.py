"""PyTorch glue: a collator that keeps packed documents apart with any attention backend, and
data loaders (over datasets and streams) that serve every rank equal steps and resume exactly.

Importing this package imports torch; ``import gristmill`` alone never does.
"""

from __future__ import annotations

from gristmill.torch.collator import Collator
from gristmill.torch.loader import DataLoader, dataloader
from gristmill.torch.streaming import StreamDataset, StreamLoader

__all__ = ["Collator", "DataLoader", "StreamDataset", "StreamLoader", "dataloader"]
