"""PyTorch glue: a collator that keeps packed documents apart with any attention backend, data
loaders (over datasets and streams) that serve every rank equal steps and resume exactly, and a
dataset as Hugging Face's trainers take it (``as_hf_dataset``, for TRL's ``SFTTrainer``).

Importing this package imports torch; ``import gristmill`` alone never does.
"""

from __future__ import annotations

from gristmill.torch.collator import Collator
from gristmill.torch.loader import DataLoader, dataloader
from gristmill.torch.streaming import StreamDataset, StreamLoader
from gristmill.torch.trainers import as_hf_dataset

__all__ = ["Collator", "DataLoader", "StreamDataset", "StreamLoader", "as_hf_dataset", "dataloader"]
