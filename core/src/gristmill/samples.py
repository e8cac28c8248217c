"""The sample contract: document segments → ``input_ids``, ``labels``, ``position_ids``, ``seq_lens``.

One function, :func:`build_samples`, defines a sample for map-style datasets (a batch at a time)
and streams (one at a time, through :func:`build_sample`), so both give exactly the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate, pairwise

import numpy as np

from gristmill.errors import DatasetError

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
LABELS = ("unshifted", "shifted")

Part = tuple[np.ndarray, "np.ndarray | None"]  # a segment's token ids and loss mask (None: all)


def check_labels(labels: str) -> str:
    if labels not in LABELS:
        raise DatasetError(f"labels must be one of {', '.join(LABELS)}, got {labels!r}")
    return labels


def join_parts(parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Segments as :func:`build_samples` takes them: their tokens and loss masks concatenated
    (``None`` when no segment has a mask) and their lengths."""
    tokens = np.concatenate([ids for ids, _ in parts])
    lengths = np.array([len(ids) for ids, _ in parts], np.int64)
    if all(mask is None for _, mask in parts):
        return tokens, None, lengths
    mask = np.concatenate([np.ones(len(ids), np.uint8) if m is None else m for ids, m in parts])
    return tokens, mask, lengths


def build_sample(
    parts: Sequence[Part], *, restart: bool = True, labels: str = "unshifted"
) -> dict[str, np.ndarray]:
    """A sample from its segments, in order (see :func:`build_samples`)."""
    tokens, mask, lengths = join_parts(parts)
    return build_samples(tokens, mask, lengths, [len(parts)], restart=restart, labels=labels)[0]


def build_samples(
    tokens: np.ndarray,
    mask: np.ndarray | None,
    seg_lens: np.ndarray,
    segments: Sequence[int] | np.ndarray,
    *,
    restart: bool = True,
    labels: str = "unshifted",
) -> list[dict[str, np.ndarray]]:
    """Samples from their segments: ``tokens`` (and the loss ``mask``, nonzero where a token
    carries loss; ``None``: every token does) of every segment of every sample, concatenated;
    ``seg_lens``, each segment's length; ``segments``, how many segments each sample has (one
    or more).

    ``labels`` holds the token id where it carries loss, else -100; with ``restart`` every
    segment is its own sequence: ``position_ids`` restart at 0 and the segment's first label is
    -100, so no position learns to predict across a document boundary when the model shifts
    labels, and ``seq_lens`` lists the segments' lengths. Without ``restart`` the sample is one
    sequence (``seq_lens`` is its length).

    ``labels="shifted"``: ``input_ids`` are the tokens but the last, and ``labels[j]`` is the
    target of position ``j`` (the next token, or -100); ``position_ids`` and ``seq_lens`` follow
    ``input_ids``.

    The arrays are int64 views of buffers shared by the batch: a few array operations build the
    whole batch, and only the cut into samples (and shifted ``seq_lens``) runs once per sample.
    """
    input_ids = tokens.astype(np.int64)
    label_ids = input_ids.copy() if mask is None else np.where(mask, input_ids, IGNORE_INDEX)
    seg_lens = np.array(seg_lens, np.int64)  # a copy: samples hold views of it, not the caller's
    ends = seg_lens.cumsum()
    # Where every sample's segments and tokens begin, then the ends: a few numbers a sample, kept
    # in Python lists (a numpy call costs more than the arithmetic on them).
    seg_at = list(accumulate(np.asarray(segments).tolist(), initial=0))
    ends_at = ends.tolist()
    token_at = [ends_at[k - 1] if k else 0 for k in seg_at]
    if restart:
        seq_lens, seq_at, starts = seg_lens, seg_at, ends - seg_lens
    else:
        seq_lens, seq_at = np.diff(token_at), list(range(len(token_at)))
        starts = np.array(token_at[:-1], np.int64)
    nonempty = seq_lens > 0
    firsts, lens = starts[nonempty], seq_lens[nonempty]
    label_ids[firsts] = IGNORE_INDEX
    # Positions count up by one and fall back to 0 at the first token of every sequence: a
    # running sum in place, so that the batch allocates no token-sized temporaries.
    position_ids = np.ones(len(input_ids), np.int64)
    position_ids[firsts[1:]] = 1 - lens[:-1]
    position_ids[:1] = 0
    position_ids.cumsum(out=position_ids)
    shift = labels == "shifted"
    bounds = list(pairwise(seq_at))
    if shift:
        # A sample's last token is only ever a target: its last sequence loses it (and goes if
        # that empties it).
        counts = seq_lens.tolist()
        for last in seq_at[1:]:
            counts[last - 1] -= 1
        per_sample = [np.array([n for n in counts[a:b] if n > 0], np.int64) for a, b in bounds]
    else:
        per_sample = [seq_lens[a:b] for a, b in bounds]
    return [
        {
            "input_ids": input_ids[lo : max(lo, hi - shift)],  # not hi - 1 = -1 when empty
            "labels": label_ids[lo + shift : hi],
            "position_ids": position_ids[lo : max(lo, hi - shift)],
            "seq_lens": sample_lens,
        }
        for (lo, hi), sample_lens in zip(pairwise(token_at), per_sample)
    ]
