"""What Hugging Face's trainers take that a gristmill dataset is not: a ``datasets.Dataset``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gristmill.errors import GristmillError, MissingDependencyError
from gristmill.serve.dataset import Dataset

INDEX = "index"


def as_hf_dataset(dataset: Dataset) -> Any:
    """``dataset`` as a ``datasets.Dataset`` whose rows are its samples, read when asked.

    For trainers that take nothing else, as TRL's ``SFTTrainer`` (which refuses any other
    class, a gristmill ``Dataset`` included, however its name reads). Nothing is copied: the
    ``datasets.Dataset`` holds one column, ``index``, and a transform turns each row asked for
    into ``dataset[index]`` (read together, as ``dataset.batch`` does). So the trainer must keep
    that column: pass ``remove_unused_columns=False`` (transformers refuses to remove every
    column, and says so), and TRL's ``dataset_kwargs={"skip_prepare_dataset": True}`` (the
    samples are tokenized and packed already).
    """
    if not isinstance(dataset, Dataset):
        raise GristmillError(
            "as_hf_dataset takes a dataset from gristmill.open_dataset, got "
            f"{type(dataset).__name__}: a mixture's weights and a stream's order are served by "
            "gristmill.torch.dataloader, which Hugging Face's trainers do not use; train on "
            "the loader (accelerate, Lightning or your own loop) instead"
        )
    try:
        import datasets
    except ImportError as e:
        raise MissingDependencyError(
            "as_hf_dataset needs the datasets library: pip install 'gristmill[hub]'"
        ) from e
    rows = datasets.Dataset.from_dict({INDEX: np.arange(len(dataset), dtype=np.int64)})
    return rows.with_transform(_Samples(dataset))


class _Samples:
    """The transform: a batch of rows (their indices) → its samples, column by column. A class,
    not a closure, so that a spawned DataLoader worker can unpickle it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __call__(self, rows: dict[str, Sequence[int]]) -> dict[str, list[Any]]:
        samples = self.dataset.batch(np.asarray(rows[INDEX], np.int64))
        keys = samples[0].keys() if len(samples) else ()
        return {key: [sample[key] for sample in samples] for key in keys}
