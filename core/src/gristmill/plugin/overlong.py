"""Documents longer than ``seq_len``: the pieces a packer places, for every packer alike.

- ``truncate`` (the default): the first ``seq_len`` tokens of the document;
- ``truncate-left``: its last ``seq_len`` tokens (a prompt loses its start, and the completion
  after it, which carries the loss, stays);
- ``fragment``: the whole document, cut into ``seq_len``-token pieces, each its own segment
  (positions restart and the first label is -100 in every piece, as for a new document);
- ``drop``: the document is left out (the plan counts it).

Empty documents are never placed.

Samples whose every label is -100 (a completion cut away, a fragment of a prompt): ``no_loss``
says whether they are served (``keep``, the default; counted and warned about) or left out of
the plan (``drop``), for every packer alike (:meth:`gristmill.serve.dataset.Dataset.without_loss`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gristmill.errors import DatasetError

POLICIES = ("truncate", "truncate-left", "fragment", "drop")
NO_LOSS = ("keep", "drop")


class Pieces(NamedTuple):
    doc: np.ndarray  # int64 per piece: the document it comes from, in document order
    start: np.ndarray  # its first token within the document
    length: np.ndarray  # its token count, 1 to seq_len
    dropped: int  # documents left out by "drop"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise DatasetError(f"overlong must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy


def check_no_loss(policy: str) -> str:
    if policy not in NO_LOSS:
        raise DatasetError(f"no_loss must be one of {', '.join(NO_LOSS)}, got {policy!r}")
    return policy


def pieces(lengths: np.ndarray, seq_len: int | None, policy: str) -> Pieces:
    """The pieces to place for documents of ``lengths`` (no limit when ``seq_len`` is None)."""
    lengths = np.asarray(lengths, np.int64)
    docs = np.flatnonzero(lengths > 0)
    if seq_len is None:
        return Pieces(docs, np.zeros(len(docs), np.int64), lengths[docs], 0)
    long = lengths[docs] > seq_len
    if policy == "drop":
        kept = docs[~long]
        return Pieces(kept, np.zeros(len(kept), np.int64), lengths[kept], int(long.sum()))
    if policy in ("truncate", "truncate-left"):
        kept = np.minimum(lengths[docs], seq_len)
        start = lengths[docs] - kept if policy == "truncate-left" else np.zeros(len(docs), np.int64)
        return Pieces(docs, start, kept, 0)
    counts = -(-lengths[docs] // seq_len)
    doc = np.repeat(docs, counts)
    first_piece = np.repeat(np.cumsum(counts) - counts, counts)
    start = (np.arange(len(doc), dtype=np.int64) - first_piece) * seq_len
    return Pieces(doc, start, np.minimum(lengths[doc] - start, seq_len), 0)
