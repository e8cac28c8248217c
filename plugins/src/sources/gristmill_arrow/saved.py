"""Folders that ``datasets`` wrote with ``save_to_disk``: which Arrow files they hold, in order.

A ``Dataset`` folder holds ``state.json`` (its data files, in order, and its format),
``dataset_info.json`` and the data files themselves, each an Arrow IPC stream. A ``DatasetDict``
folder holds ``dataset_dict.json`` (the names of its splits) and one ``Dataset`` folder per split.
Only these JSON files are read here, with the standard library: no ``datasets`` is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gristmill.errors import DataError

STATE, DICT, INFO = "state.json", "dataset_dict.json", "dataset_info.json"
MARKERS = (STATE, DICT, INFO)
DEFAULT_SPLIT = "train"  # the split of a DatasetDict read when none is named, as hub: does


@dataclass(frozen=True)
class Saved:
    """What a saved folder holds: its data files in order, the columns its format shows
    (``None``: all), the split read and every split of a ``DatasetDict`` (empty for a
    ``Dataset``)."""

    files: tuple[str, ...]
    columns: tuple[str, ...] | None
    split: str | None = None
    splits: tuple[str, ...] = ()


def saved(folder: str, split: str | None) -> Saved:
    """The ``Dataset`` that ``folder`` holds, or the ``split`` of its ``DatasetDict``
    (``train`` when ``split`` is ``None``); a :class:`DataError` saying what to do otherwise."""
    root = Path(folder)
    if (root / DICT).is_file():
        splits = _splits(root)
        name = split if split is not None else DEFAULT_SPLIT
        if name not in splits:
            listed = ", ".join(map(repr, splits))
            how = f"name its folder ({root / splits[0]}) or give the source option split=NAME"
            raise DataError(
                f"a DatasetDict with the splits {listed} and none named {name!r}: {how}",
                where=folder,
            )
        return replace(_dataset(root / name), split=name, splits=splits)
    if split is not None:
        raise DataError(
            f"split={split!r} names a split of a DatasetDict folder, and this folder holds one "
            f"Dataset (it has no {DICT}): leave the split out",
            where=folder,
        )
    if (root / STATE).is_file():
        return _dataset(root)
    raise DataError(_not_saved(root), where=folder)


def _splits(root: Path) -> tuple[str, ...]:
    listed = _json(root / DICT).get("splits")
    if not isinstance(listed, list) or not listed or not all(isinstance(s, str) for s in listed):
        raise DataError(
            f"{DICT} does not list the splits (a non-empty list of names under 'splits'): the "
            "folder is damaged; save the DatasetDict again",
            where=str(root),
        )
    return tuple(listed)


def _dataset(root: Path) -> Saved:
    """The data files and format of the ``Dataset`` folder ``root``."""
    if not (root / STATE).is_file():
        raise DataError(
            f"no {STATE}: this is not a Dataset that save_to_disk wrote; save it again",
            where=str(root),
        )
    state = _json(root / STATE)
    listed = state.get("_data_files")
    names = [f.get("filename") for f in listed] if isinstance(listed, list) else None
    if not names or not all(isinstance(n, str) and n for n in names):
        raise DataError(
            f"{STATE} lists no data files (_data_files): the folder is damaged; save it again",
            where=str(root),
        )
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"{STATE} lists {', '.join(missing)}, which the folder does not hold: it is "
            "incomplete (an interrupted copy or save?); save or copy it again",
            where=str(root),
        )
    # A format saved with set_format(columns=...) shows only those columns, unless it keeps the
    # others too: load_from_disk reads the same.
    columns = state.get("_format_columns")
    shown = tuple(columns) if columns and not state.get("_output_all_columns") else None
    return Saved(tuple(str(root / n) for n in names), shown)


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot be read as JSON ({exc}): the folder is damaged; save it again",
            where=str(path),
        ) from None
    if not isinstance(value, dict):
        raise DataError("is not a JSON object: the folder is damaged", where=str(path))
    return value


def _not_saved(root: Path) -> str:
    """Why a folder holding only ``dataset_info.json`` is no saved dataset, and what to do."""
    arrows = sorted(p.name for p in root.glob("*.arrow"))
    found = f" It holds {', '.join(arrows[:5])}{' …' if len(arrows) > 5 else ''}." if arrows else ""
    return (
        f"holds {INFO} but neither {STATE} (a Dataset saved with save_to_disk) nor {DICT} (a "
        f"DatasetDict), so it is no folder that save_to_disk wrote, or an incomplete one.{found} "
        f"To read Arrow files in it (a datasets cache folder), name them: '{root}/*.arrow'; to "
        "read other files in it, name those"
    )
