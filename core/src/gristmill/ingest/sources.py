"""Turning source specs (prefixes, paths, globs, directories, presets) into opened sources.

``preset:NAME`` is resolved here, not by a plugin: a preset names any source spec, which opens as
if the user had named it, and the defaults it gives a run come from :func:`preset_defaults`.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import json
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gristmill.errors import DataError
from gristmill.ingest.tokenizers import declared_tokenizer
from gristmill.layout import FORMAT, INCOMPLETE, MANIFEST, REJECTS, reject_file
from gristmill.plugin.components import PRESET_PREFIX, PresetType, Source, SourceType
from gristmill.plugin.files import without_compression
from gristmill.plugin.manager import PluginManager

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger("gristmill")

DEFAULT_TOKENIZER = "byte"  # a run's tokenizer when neither the user nor a preset names one
Opts = TypeVar("Opts", bound="DataclassInstance")


def open_sources(
    specs: Sequence[str | os.PathLike[str]],
    manager: PluginManager,
    options: Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    **context: Any,
) -> list[Source]:
    """Open every source, in the order given; paths expand to their files in sorted order.

    The user's ``options`` go to every source factory, each checked against what its source type
    declares; so does gristmill's ``context`` (``max_record_bytes``…). A preset's source opens
    with the preset's options under the user's. Directories and globs pass over gristmill
    datasets, reject files and the run's ``output`` (a dataset directory or a converted file,
    and its reject file); naming one of them is an error.
    """
    if not specs:
        raise DataError("no sources given: name files, globs, directories or e.g. sample:stdlib")
    opened: list[Source] = []
    for raw in specs:
        spec, given = os.fspath(raw), dict(options or {})
        preset = _preset(spec, manager)
        if preset is not None:
            spec, given = preset.source, {**preset.source_options(), **given}
        claimed = manager.claim(SourceType, spec, by="prefixes")
        if claimed is not None:
            opened.append(claimed.factory(spec, **context, **claimed.check_options(given)))
            continue
        for path in _expand(spec, manager, _Outputs(output)):
            source_type = _for_file(path, manager)
            opened.append(source_type.factory(path, **context, **source_type.check_options(given)))
    return opened


def with_preset_defaults(
    options: Opts,
    sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    manager: PluginManager,
) -> Opts:
    """``options`` (a call's options dataclass) with what the user left unset filled in: a
    ``tokenizer`` of ``None`` and empty ``fields`` take the presets' among ``sources`` (see
    :class:`~gristmill.plugin.components.PresetType`); a tokenizer still unset is the one the
    sources' own token ids belong to (``SourceType.tokenizer``), else ``byte``.

    Presets that disagree on a setting the user left unset raise
    :class:`~gristmill.errors.DataError` asking for it to be given.
    """
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    names = {f.name for f in dataclasses.fields(options)}
    unset = [
        name for name in ("tokenizer", "fields") if name in names and not getattr(options, name)
    ]
    filled = {}
    if "tokenizer" in unset:  # the one the sources' own ids belong to (synthetic:), else byte
        declared = declared_tokenizer(specs, getattr(options, "source_options", None), manager)
        filled["tokenizer"] = declared or DEFAULT_TOKENIZER
    filled.update(preset_defaults(specs, manager, unset))
    return dataclasses.replace(options, **filled) if filled else options


def preset_defaults(
    specs: Sequence[str | os.PathLike[str]],
    manager: PluginManager,
    settings: Collection[str] = ("tokenizer", "fields"),
) -> dict[str, Any]:
    """Of ``settings``, those the presets among ``specs`` give: ``tokenizer`` (where a preset
    names one) and ``fields`` (where a preset's text field is not ``text``)."""
    presets = [p for p in (_preset(os.fspath(s), manager) for s in specs) if p is not None]
    wanted = {
        "tokenizer": {(p.name, p.tokenizer) for p in presets if p.tokenizer is not None},
        "fields": {(p.name, p.text_field) for p in presets if p.text_field != "text"},
    }
    defaults: dict[str, Any] = {}
    for setting in settings:
        named = wanted[setting]
        values = sorted({value for _, value in named})
        if len(values) > 1:
            says = ", ".join(f"preset:{name} {value!r}" for name, value in sorted(named))
            raise DataError(
                f"the presets of this run disagree on the {setting} ({says}): give it yourself"
            )
        if values:
            defaults[setting] = values[0] if setting == "tokenizer" else {"text": values[0]}
    return defaults


def _preset(spec: str, manager: PluginManager) -> PresetType | None:
    """The preset ``spec`` names (``preset:NAME``), or None for any other spec."""
    if not spec.startswith(PRESET_PREFIX):
        return None
    return manager.get(PresetType, spec.removeprefix(PRESET_PREFIX))


def _for_file(path: str, manager: PluginManager) -> SourceType:
    folder = _folder_type(Path(path), manager) if os.path.isdir(path) else None
    claimed = folder or manager.claim(SourceType, without_compression(path), by="suffixes")
    if claimed is None:
        suffixes = sorted(
            {s for rec in manager.components(SourceType).values() for s in rec.suffixes}
        )
        raise manager.unknown_error(
            SourceType,
            path,
            f"no source reads {path!r}: known file suffixes are {', '.join(suffixes)}",
        )
    return claimed


def _expand(spec: str, manager: PluginManager, outputs: _Outputs) -> list[str]:
    if glob.has_magic(spec):
        found = [
            p
            for p in sorted(glob.glob(spec, recursive=True))
            if outputs.readable(Path(p)) and _is_file(Path(p))
        ]
        if not found:
            raise DataError(f"the pattern {spec!r} matches no files")
        return found
    path = Path(spec)
    outputs.refuse(path)
    if path.is_dir():
        if _folder_type(path, manager) is not None:
            return [spec]
        readable = sorted(
            str(p)
            for p in outputs.walk(path, lambda d: _folder_type(d, manager) is not None)
            if p.is_dir()
            or (
                manager.claim(SourceType, without_compression(str(p)), by="suffixes")
                and _is_file(p)
            )
        )
        if not readable:
            raise DataError(f"the directory {spec!r} holds no file that any source reads")
        return readable
    if not path.exists():
        _refuse_broken_link(path)
        records = manager.components(SourceType).values()
        prefixes = sorted({PRESET_PREFIX, *(p for rec in records for p in rec.prefixes)})
        raise DataError(
            f"source {spec!r} not found: give an existing file, directory or glob, "
            f"or a spec starting with {', '.join(prefixes)}"
        )
    return [spec]


def _folder_type(path: Path, manager: PluginManager) -> SourceType | None:
    """The source type that reads the directory ``path`` as one source (it holds one of the
    type's ``markers``, as a folder ``datasets`` saved does), or None for a folder of files."""
    claims = [
        record
        for record in manager.components(SourceType).values()
        if any((path / marker).is_file() for marker in record.markers)
    ]
    if len(claims) > 1:
        names = " and ".join(repr(record.name) for record in claims)
        raise DataError(
            f"the folder {str(path)!r} is claimed by the sources {names}: name its files"
        )
    return claims[0] if claims else None


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file to read; a link that leads nowhere is an error, not skipped."""
    if path.is_file():
        return True
    _refuse_broken_link(path)
    return False


def _refuse_broken_link(path: Path) -> None:
    """Raise when ``path`` is a symbolic link loop, or a link to nothing."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(
                f"source {str(path)!r} is a symbolic link loop (a link that leads back to "
                "itself): it never reaches a file; fix or remove the link"
            ) from None
        if os.path.islink(path):
            raise DataError(
                f"source {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does "
                "not exist; fix or remove the link"
            ) from None


def is_dataset(directory: Path) -> bool:
    """Whether ``directory`` is a gristmill dataset: finished (its manifest says so) or being
    written (the incomplete marker)."""
    if (directory / INCOMPLETE).exists():
        return True
    try:
        manifest = json.loads((directory / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


class _Outputs:
    """What gristmill wrote, which is never input: datasets, reject files, the run's output.

    A dataset's files would come back as records (its manifest and tokenizer are JSON), and the
    run's own output would be read while it is replaced.
    """

    OWN, DATASET = "this run's output", "a gristmill dataset"

    def __init__(self, output: str | os.PathLike[str] | None):
        own = () if output is None else (Path(output), reject_file(Path(output)))
        self.own = {_real(p) for p in own}
        self.datasets: dict[Path, bool] = {}  # directory -> is_dataset, looked up once
        self.passed: set[Path] = set()  # said once in the log

    def refuse(self, path: Path) -> None:
        """Raise when ``path``, named as a source, is gristmill's output rather than raw input."""
        found = self._written(path)
        if found is None or found[1] not in (self.OWN, self.DATASET):
            return  # another run's reject file, named on purpose, is read
        thing, what = found
        if what == self.OWN:
            raise DataError(
                f"source {str(path)!r} is this run's own output, which cannot be read while it "
                "is written: give the raw files, or write the output elsewhere"
            )
        part = "" if thing == _real(path) else f"is part of {thing}, which "
        raise DataError(
            f"source {str(path)!r} {part}is a gristmill dataset, not raw input: read it with "
            f"gristmill.open_dataset({str(thing)!r}), or write it in another format with "
            f"`gristmill export {thing} --to NAME -o OUT`; to prepare again, give the raw "
            "files it was prepared from (its manifest lists them under provenance.sources)"
        )

    def walk(self, top: Path, whole: Callable[[Path], bool]) -> list[Path]:
        """Every file below ``top`` that :meth:`readable` admits, and every directory that is
        ``whole`` (one source), not entered; datasets are not entered."""
        found: list[Path] = []
        for root, directories, files in os.walk(top):
            here = Path(root)
            kept = [d for d in directories if self.readable(here / d)]
            folders = [d for d in kept if whole(here / d)]
            found += [here / d for d in folders]
            directories[:] = [d for d in kept if d not in folders]
            found += [here / name for name in files if self.readable(here / name)]
        return found

    def readable(self, path: Path) -> bool:
        """Whether a file or directory found below a directory or by a glob is input."""
        found = self._written(path)
        if found is None:
            return True
        if found[0] not in self.passed:
            self.passed.add(found[0])
            log.info(f"{found[0]}: {found[1]}, not read as input")
        return False

    def _written(self, path: Path) -> tuple[Path, str] | None:
        """What gristmill wrote that ``path`` is, lies in or links to, and what that is."""
        places = (_real(path.parent) / path.name, _real(path))  # where it lies, where it leads
        if any(place in self.own for place in places):
            return path, self.OWN
        for place in places:
            dataset = self._dataset_holding(place)
            if dataset is not None:
                return dataset, self.DATASET
        if path.name.endswith(REJECTS) and _rejected_by(path).exists():
            return path, f"the records {_rejected_by(path).name} rejected"
        return None

    def _dataset_holding(self, real: Path) -> Path | None:
        """The dataset directory that is or holds ``real``, if any."""
        for directory in (real, *real.parents):
            if directory not in self.datasets:
                self.datasets[directory] = directory.is_dir() and is_dataset(directory)
            if self.datasets[directory]:
                return directory
        return None


def _real(path: Path) -> Path:
    # realpath, unlike Path.resolve, returns a link loop as it is instead of raising.
    return Path(os.path.realpath(path))


def _rejected_by(rejects: Path) -> Path:
    """``NAME`` for ``NAME.rejects.jsonl``: the output whose run wrote it."""
    return rejects.with_name(rejects.name[: -len(REJECTS)])
