"""PyTorch glue: a collator that keeps packed documents apart with any attention backend, and a
data loader that serves every rank equal steps and resumes exactly.

Importing this package imports torch; ``import gristmill`` alone never does.
"""

from __future__ import annotations

from gristmill.torch.collator import Collator
from gristmill.torch.loader import DataLoader, dataloader

__all__ = ["Collator", "DataLoader", "dataloader"]
