"""The sample contract: document segments → ``input_ids``, ``labels``, ``position_ids``, ``seq_lens``.

One function serves map-style datasets and streams alike, so both give exactly the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gristmill.errors import DatasetError

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
LABELS = ("unshifted", "shifted")

Part = tuple[np.ndarray, "np.ndarray | None"]  # a segment's token ids and loss mask (None: all)


def check_labels(labels: str) -> str:
    if labels not in LABELS:
        raise DatasetError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    return labels


def build_sample(
    parts: Sequence[Part], *, restart: bool = True, labels: str = "unshifted"
) -> dict[str, np.ndarray]:
    """A sample from its segments, in order.

    ``labels`` holds the token id where it carries loss, else -100; with ``restart`` every
    segment is its own sequence: ``position_ids`` restart at 0 and the segment's first label is
    -100, so no position learns to predict across a document boundary when the model shifts
    labels, and ``seq_lens`` lists the segments' lengths. Without ``restart`` the sample is one
    sequence (``seq_lens`` is its length).

    ``labels="shifted"``: ``input_ids`` are the tokens but the last, and ``labels[j]`` is the
    target of position ``j`` (the next token, or -100); ``position_ids`` and ``seq_lens`` follow
    ``input_ids``.
    """
    input_ids = np.concatenate([ids for ids, _ in parts]).astype(np.int64)
    if all(mask is None for _, mask in parts):
        label_ids = input_ids.copy()
    else:
        mask = np.concatenate(
            [np.ones(len(ids), np.uint8) if m is None else m for ids, m in parts]
        ).astype(bool)
        label_ids = np.where(mask, input_ids, IGNORE_INDEX)
    seq_lens = (
        np.array([len(ids) for ids, _ in parts], np.int64)
        if restart
        else np.array([len(input_ids)], np.int64)
    )
    starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]])
    label_ids[starts[seq_lens > 0]] = IGNORE_INDEX
    position_ids = np.arange(len(input_ids), dtype=np.int64) - np.repeat(starts, seq_lens)
    if labels == "shifted":
        seq_lens = seq_lens.copy()
        seq_lens[-1] -= 1  # the last token is only ever a target
        return {
            "input_ids": input_ids[:-1],
            "labels": label_ids[1:],
            "position_ids": position_ids[:-1],
            "seq_lens": seq_lens[seq_lens > 0],
        }
    return {
        "input_ids": input_ids,
        "labels": label_ids,
        "position_ids": position_ids,
        "seq_lens": seq_lens,
    }
