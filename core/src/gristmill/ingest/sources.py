"""Turning source specs (prefixes, paths, globs, directories, presets, data lists, bare names)
into opened sources.

``preset:NAME`` and data lists (:mod:`gristmill.ingest.datalist`) are resolved here, not by a
plugin: a preset names any source spec, which opens as if the user had named it, and the defaults
it gives a run come from :func:`preset_defaults`; a data list's entries open as if each had been
named. A name that is not a local path may stand for a preset (``pile``) or a Hub dataset
(``ORG/NAME``): :func:`named_spec`. In-memory records arrive already made into sources
(:mod:`gristmill.ingest.records`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gristmill.errors import DataError, GristmillError, OptionError, UnknownComponentError
from gristmill.ingest.datalist import LIST_PREFIX, Entry, Sampled, list_file, read_entries, sampled
from gristmill.ingest.tokenizers import declared_tokenizer
from gristmill.layout import FORMAT, INCOMPLETE, MANIFEST, REJECTS, reject_file
from gristmill.plugin.components import PRESET_PREFIX, PresetType, Source, SourceType
from gristmill.plugin.files import without_compression
from gristmill.plugin.manager import PluginManager

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger("gristmill")

DEFAULT_TOKENIZER = "byte"  # a run's tokenizer when neither the user nor a preset names one
HUB_PREFIX = "hub:"  # where a bare ORG/NAME goes, when a source claims it
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # before :config, @rev, #split
PRESET_NAME = re.compile(r"[A-Za-z][\w-]*")
Opts = TypeVar("Opts", bound="DataclassInstance")
Input = str | os.PathLike[str] | Source  # a spec, or in-memory records made into a source


def open_sources(
    specs: Sequence[Input],
    manager: PluginManager,
    options: Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    **context: Any,
) -> list[Source]:
    """Open every source, in the order given; paths expand to their files in sorted order, data
    lists to their entries' sources.

    The user's ``options`` go to every source factory, each checked against what its source type
    declares; so does gristmill's ``context`` (``max_record_bytes``…). A preset's source opens
    with the preset's options under the user's. Directories and globs pass over gristmill
    datasets, reject files and the run's ``output`` (a dataset directory or a converted file,
    and its reject file); naming one of them is an error. A source already made (in-memory
    records) takes no options.
    """
    if not specs:
        raise DataError("no sources given: name files, globs, directories or e.g. sample:stdlib")
    opener = _Opener(manager, _Outputs(output), context)
    opened: list[Source] = []
    for raw in specs:
        if isinstance(raw, (str, os.PathLike)):
            opened += opener.open(os.fspath(raw), dict(options or {}))
        elif options:
            raise OptionError(f"{raw.spec}: in-memory records take no source options: {options}")
        else:
            opened.append(raw)
    return opened


class _Opener:
    """Opens one spec of a run: what every spec of it shares."""

    def __init__(self, manager: PluginManager, outputs: _Outputs, context: dict[str, Any]):
        self.manager, self.outputs, self.context = manager, outputs, context

    def open(
        self,
        spec: str,
        given: dict[str, Any],
        reader: SourceType | None = None,
        entry: Entry | None = None,
    ) -> list[Source]:
        """The sources ``spec`` names; ``reader`` reads its files whatever their suffix, and
        ``entry`` is the data-list entry that names it (a data list cannot name another)."""
        manager, named = self.manager, named_spec(spec, self.manager)
        if named != spec:
            log.info(f"{spec}: no such local path; reading {named}")
        preset = _preset(named, manager)
        if preset is not None:
            named, given = preset.source, {**preset.source_options(), **given}
        listed = list_file(named)
        if listed is not None and entry is not None:
            raise DataError(f"{named} is a data list: a data list cannot name another one")
        if listed is not None:
            return self.open_list(listed, given)
        claimed = manager.claim(SourceType, named, by="prefixes")
        if claimed is not None and reader is not None:
            raise DataError(f"format names the source of files, folders and globs, not of {named}")
        if claimed is not None:
            return [claimed.factory(named, **self.context, **claimed.check_options(given))]
        opened = []
        for path in _expand(named, manager, self.outputs, every_file=reader is not None):
            kind = reader or _for_file(path, manager)
            opened.append(kind.factory(path, **self.context, **kind.check_options(given)))
        return opened

    def open_list(self, path: str, given: dict[str, Any]) -> list[Source]:
        """The sources of a data list's entries, in order, each at its ratio."""
        opened: list[Source] = []
        for entry in read_entries(path):
            try:
                reader = (
                    None if entry.format is None else self.manager.get(SourceType, entry.format)
                )
                spec = _entry_spec(entry, self.manager)
                if spec.startswith((PRESET_PREFIX, HUB_PREFIX)) and spec != entry.path:
                    log.info(f"{entry.where}: no such local path; reading {spec}")
                sources = self.open(spec, given, reader, entry)
            except GristmillError as exc:
                raise reworded(exc, where=entry.where) from None
            if entry.ratio != 1:
                sources = [sampled(source, entry.ratio, entry) for source in sources]
            opened += sources
        return opened


def named_spec(spec: str, manager: PluginManager, folder: str = ".") -> str:
    """``spec``, or what a bare name that is not a local path stands for: a preset
    (``pile`` → ``preset:pile``), else a Hub dataset (``ORG/NAME`` → ``hub:ORG/NAME``) unless
    ``ORG`` is a local folder or ``NAME`` ends in a suffix a source reads (a file not found).
    A local path always wins. ``folder``: where a relative path starts."""
    if _prefixed(spec, manager) or glob.has_magic(spec):
        return spec
    if os.path.lexists(os.path.join(folder, os.path.expanduser(spec))):
        return spec
    if PRESET_NAME.fullmatch(spec):
        try:
            return PRESET_PREFIX + manager.get(PresetType, spec).name
        except UnknownComponentError:
            return spec
    name = re.split(r"[:@#]", spec, maxsplit=1)[0]
    hub = HUB_PREFIX + spec
    if (
        HUB_NAME.fullmatch(name)
        and not os.path.isdir(os.path.join(folder, name.split("/")[0]))
        and manager.claim(SourceType, without_compression(name), by="suffixes") is None
        and manager.claim(SourceType, hub, by="prefixes") is not None
    ):
        return hub
    return spec


def _entry_spec(entry: Entry, manager: PluginManager) -> str:
    """What a data-list entry names: a path relative to the list's folder, or a spec."""
    named = named_spec(entry.path, manager, entry.folder)
    if named != entry.path or _prefixed(entry.path, manager):
        return named
    return os.path.join(entry.folder, os.path.expanduser(entry.path))


def _prefixed(spec: str, manager: PluginManager) -> bool:
    return spec.startswith((PRESET_PREFIX, LIST_PREFIX)) or (
        manager.claim(SourceType, spec, by="prefixes") is not None
    )


def sampling(source: Source) -> dict[str, Any]:
    """Where a source read at a ratio comes from (its data list and entry) and the ratio; for
    a manifest's provenance. Empty for any other source."""
    if not isinstance(source, Sampled):
        return {}
    entry = source.entry
    return {"list": entry.listed, "entry": entry.number, "ratio": source.ratio}


def reworded(exc: GristmillError, *, where: str = "", after: str = "") -> GristmillError:
    """``exc`` (of the same type) with ``where`` before its message and ``after`` after it."""
    if isinstance(exc, DataError):
        place = ": ".join(p for p in (where, exc.where) if p) or None
        return type(exc)(exc.reason + after, where=place, field=exc.field)
    made = copy.copy(exc)
    made.args = (f"{where}: {exc}{after}" if where else f"{exc}{after}",)
    return made


def with_preset_defaults(
    options: Opts,
    sources: Input | Sequence[Input],
    manager: PluginManager,
) -> Opts:
    """``options`` (a call's options dataclass) with what the user left unset filled in: a
    ``tokenizer`` of ``None`` and empty ``fields`` take the presets' among ``sources`` (see
    :class:`~gristmill.plugin.components.PresetType`); a tokenizer still unset is the one the
    sources' own token ids belong to (``SourceType.tokenizer``), else ``byte``.

    Presets that disagree on a setting the user left unset raise
    :class:`~gristmill.errors.DataError` asking for it to be given.
    """
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)  # type: ignore[arg-type]
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
    specs: Sequence[Input],
    manager: PluginManager,
    settings: Collection[str] = ("tokenizer", "fields"),
) -> dict[str, Any]:
    """Of ``settings``, those the presets among ``specs`` (data lists' entries included) give:
    ``tokenizer`` (where a preset names one) and ``fields`` (where a preset's text field is not
    ``text``)."""
    presets = _presets(specs, manager)
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


def _presets(specs: Sequence[Input], manager: PluginManager) -> list[PresetType]:
    """The presets ``specs`` name, directly or as entries of a data list."""
    found = []
    for raw in specs:
        if not isinstance(raw, (str, os.PathLike)):
            continue
        spec = named_spec(os.fspath(raw), manager)
        listed = list_file(spec)
        entries = [spec] if listed is None else _listed_specs(listed, manager)
        found += [p for p in (_preset(s, manager) for s in entries) if p is not None]
    return found


def _listed_specs(path: str, manager: PluginManager) -> list[str]:
    try:
        return [_entry_spec(entry, manager) for entry in read_entries(path)]
    except GristmillError:
        return []  # opening the list says what is wrong with it


@contextlib.contextmanager
def presets_tokenizer(
    given: str | None, specs: Sequence[Input], manager: PluginManager
) -> Iterator[None]:
    """A tokenizer that fails to load, where a preset chose it (``given`` is the user's, None),
    fails naming the preset and how to give another."""
    try:
        yield
    except GristmillError as exc:
        chosen = [p for p in _presets(specs, manager) if p.tokenizer is not None]
        if given is not None or not chosen:
            raise
        raise reworded(
            exc,
            after=(
                f" (the tokenizer preset:{chosen[0].name} uses when none is given; --tokenizer, "
                "or tokenizer= in Python and config files, chooses another)"
            ),
        ) from None


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


def _expand(
    spec: str, manager: PluginManager, outputs: _Outputs, *, every_file: bool = False
) -> list[str]:
    """The files (and whole-folder sources) ``spec`` names; ``every_file``: a directory's files
    whatever their suffix (a data-list entry's ``format`` reads them), hidden ones left out."""
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
                (
                    (every_file and not p.name.startswith("."))
                    or manager.claim(SourceType, without_compression(str(p)), by="suffixes")
                )
                and _is_file(p)
            )
        )
        if not readable:
            raise DataError(f"the directory {spec!r} holds no file that any source reads")
        return _without_cards(readable)
    if not path.exists():
        _refuse_broken_link(path)
        records = manager.components(SourceType).values()
        prefixes = sorted(
            {PRESET_PREFIX, LIST_PREFIX, *(p for rec in records for p in rec.prefixes)}
        )
        raise DataError(
            f"source {spec!r} not found: give an existing file, directory or glob, "
            f"or a spec starting with {', '.join(prefixes)}"
        )
    return [spec]


def _without_cards(paths: list[str]) -> list[str]:
    """``paths`` less the dataset cards (``README.md``) a walk found beside data files other than
    Markdown: a card describes the data and is not part of it. A card named on its own, or in a
    folder of Markdown documents, is read."""
    cards = [p for p in paths if Path(p).name.lower() == "readme.md"]
    if not cards or all(without_compression(p).lower().endswith(".md") for p in paths):
        return paths
    log.info(f"passed over {', '.join(cards)}: a dataset card, not data (name it to read it)")
    return [p for p in paths if p not in cards]


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
