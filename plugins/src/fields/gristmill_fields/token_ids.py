"""The ``token-ids`` field mapper: records that already hold token ids, stored as they are.

A record gives ``input_ids`` (a list of whole numbers, 0 or more) and at most one of ``labels``
(Hugging Face's convention: a copy of ``input_ids`` with -100 where no loss, not shifted) or
``loss_mask`` (1 where a token carries loss, 0 where not); with neither, every token carries
loss. An ``attention_mask`` marks padding with 0: those positions are dropped, since gristmill
packs documents itself. Whether an id lies inside the tokenizer's vocabulary is checked where a
tokenizer is known (prepare, stream), not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gristmill.errors import FieldError
from gristmill.plugin.components import FieldMap
from gristmill.plugin.examples import Example

IGNORE_INDEX = -100  # a label that carries no loss, as Hugging Face's losses take it
FIELDS = ("input_ids", "labels", "loss_mask", "attention_mask")
INTEGERS = (int, np.integer)
NOT_INTEGERS = (bool, np.bool_)


def token_ids_mapper(fields: Mapping[str, str]) -> FieldMap:
    ids_column, labels_column, mask_column, attention_column = (
        fields.get(name, name) for name in FIELDS
    )

    def to_example(record: Mapping[str, Any]) -> Example:
        if ids_column not in record:
            message = "missing; name the column with --fields input_ids=COLUMN"
            raise FieldError(ids_column, message, "missing-field")
        ids = _integers(record[ids_column], ids_column)
        if not len(ids):
            raise FieldError(ids_column, "empty: a document needs one token or more", "empty-field")
        negative = np.flatnonzero(ids < 0)
        if len(negative):
            i = int(negative[0])
            message = f"{ids_column}[{i}] is {ids[i]}: a token id is 0 or more"
            raise FieldError(ids_column, message, "bad-token-id")
        mask = _loss_mask(record, ids, ids_column, labels_column, mask_column)
        padding = _bits(record.get(attention_column), attention_column, ids_column, len(ids))
        if padding is not None and not padding.all():
            keep = padding.astype(bool)
            ids, mask = ids[keep], None if mask is None else mask[keep]
            if not len(ids):
                message = "every token is padding (0): nothing to store"
                raise FieldError(attention_column, message, "empty-field")
        loss = None if mask is None or mask.all() else tuple(mask.tolist())
        return Example(input_ids=tuple(ids.tolist()), loss_mask=loss)

    return to_example


def _loss_mask(
    record: Mapping[str, Any],
    ids: np.ndarray,
    ids_column: str,
    labels_column: str,
    mask_column: str,
) -> np.ndarray | None:
    """1 where a token carries loss, from the record's labels or loss mask; ``None``: every one."""
    labels = record.get(labels_column)
    if labels is not None and record.get(mask_column) is not None:
        message = (
            f"the record has both {labels_column} and {mask_column}: give one (labels: -100 "
            "where no loss; loss_mask: 0 where no loss)"
        )
        raise FieldError(labels_column, message, "bad-label")
    if labels is None:
        return _bits(record.get(mask_column), mask_column, ids_column, len(ids))
    values = _integers(labels, labels_column)
    _same_length(values, labels_column, ids_column, len(ids))
    wrong = np.flatnonzero((values != IGNORE_INDEX) & (values != ids))
    if len(wrong):
        i = int(wrong[0])
        message = (
            f"{labels_column}[{i}] is {values[i]} where {ids_column}[{i}] is {ids[i]}: labels "
            f"are a copy of {ids_column} with {IGNORE_INDEX} where no loss (Hugging Face's "
            "convention, not shifted); for other targets, write a loss_mask"
        )
        raise FieldError(labels_column, message, "bad-label")
    return (values != IGNORE_INDEX).astype(np.uint8)


def _bits(value: Any, column: str, ids_column: str, length: int) -> np.ndarray | None:
    """A mask of 0s and 1s (booleans too) as uint8, as long as the ids; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and value and set(map(type, value)) <= {bool, np.bool_}:
        values = np.asarray(value, dtype=np.int64)
    elif isinstance(value, np.ndarray) and value.dtype.kind == "b" and value.ndim == 1:
        values = value.astype(np.int64)
    else:
        values = _integers(value, column)
    _same_length(values, column, ids_column, length)
    wrong = np.flatnonzero((values != 0) & (values != 1))
    if len(wrong):
        i = int(wrong[0])
        message = f"{column}[{i}] is {values[i]}: a mask holds 0 and 1"
        raise FieldError(column, message, "bad-mask")
    return values.astype(np.uint8)


def _same_length(values: np.ndarray, column: str, ids_column: str, length: int) -> None:
    if len(values) != length:
        message = f"{len(values)} values for {length} token ids: one per id of {ids_column}"
        raise FieldError(column, message, "length-mismatch")


def _integers(value: Any, column: str) -> np.ndarray:
    """``value`` as an int64 array, when it is a flat list (or 1-D array) of whole numbers."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        if value.dtype.kind == "u" and len(value) and int(value.max()) > np.iinfo(np.int64).max:
            i = int(np.argmax(value > np.iinfo(np.int64).max))
            raise FieldError(column, f"{column}[{i}] is {value[i]}: too large", "bad-token-id")
        return value.astype(np.int64)
    if isinstance(value, np.ndarray):
        value = value.tolist()  # a float, boolean or nested array: named item by item below
    if not isinstance(value, (list, tuple)):
        kind = "null" if value is None else type(value).__name__
        raise FieldError(column, f"expected a list of whole numbers, got {kind}", "wrong-type")
    types = set(map(type, value))
    if types <= {int}:  # the common case, decided without a loop in Python
        try:
            return np.asarray(value, dtype=np.int64)
        except OverflowError:
            i = next(i for i, v in enumerate(value) if not -(2**63) <= v < 2**63)
            message = f"{column}[{i}] is {value[i]}: too large"
            raise FieldError(column, message, "bad-token-id") from None
    for i, item in enumerate(value):
        if not isinstance(item, INTEGERS) or isinstance(item, NOT_INTEGERS):
            kind = "null" if item is None else f"{type(item).__name__} {item!r}"[:60]
            message = f"{column}[{i}] is {kind}, not a whole number"
            raise FieldError(column, message, "wrong-type")
    return _integers([int(v) for v in value], column)  # numpy integers among them
