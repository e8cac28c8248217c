"""Config files: the keyword arguments of gristmill's Python API in one TOML or YAML file.

Each section holds the keyword arguments of one call, under the same names: ``[prepare]``
(:func:`gristmill.prepare`), ``[dataset]`` (:func:`gristmill.open_dataset`), ``[stream]``
(:func:`gristmill.stream`), ``[mixture]`` (:func:`gristmill.mixture`), ``[loader]``
(:func:`gristmill.torch.dataloader`) and ``[collator]`` (:class:`gristmill.torch.Collator`).
The whole file is checked before anything runs, against one declarative table per section
(``SECTIONS``), and every ``*_options`` table against the options its component declares; every
problem names the file and the key's path, e.g.
``run.toml: loader.batch_size: expected a positive integer, got "eight"``. The tables of
``[prepare]``, ``[dataset]`` and ``[stream]`` are made from the fields of the calls' options
(:mod:`gristmill.options`), so they cannot drift from the API; a test holds the others to the
signatures of the functions they feed.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.errors import GristmillError, MissingDependencyError
from gristmill.ingest.sources import DEFAULT_TOKENIZER
from gristmill.options import (
    BOOL,
    COUNT,
    COUNTS,
    INTEGER,
    POSITIVE,
    STRING,
    STRINGS,
    TABLE,
    DatasetOptions,
    Kind,
    Options,
    PrepareOptions,
    StreamOptions,
    described,
    is_number,
    is_strings,
    one_of,
)
from gristmill.plugin.components import RECORD_TYPES, Component

if TYPE_CHECKING:
    from gristmill.serve.dataset import Dataset
    from gristmill.serve.mixture import Mixture
    from gristmill.serve.stream import Stream

COMMAND_LINE = "command line"  # the origin of `gristmill prepare --config FILE`'s options


class ConfigError(GristmillError):
    """A config file cannot be used. ``problems`` holds one line per problem, each naming the
    file (or where an override came from) and the path to the key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


SOURCES = Kind(
    "a string or a non-empty list of strings",
    lambda v: isinstance(v, str) or (is_strings(v) and len(v) > 0),
)
WEIGHTS = Kind(
    "a table of non-negative numbers",
    lambda v: isinstance(v, Mapping) and all(is_number(w) and w >= 0 for w in v.values()),
)
DTYPE = one_of("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class Key:
    """One key of a section. ``default`` is the API's (shown in the docs) and is not applied
    here: a key left out is an argument left out."""

    kind: Kind
    default: Any = None
    help: str = ""
    required: bool = False
    argument: str | None = None  # the API's parameter, where its name differs from the key's
    flag: str | None = None  # how `gristmill prepare` spells it, where not --the-key-name
    entries: Mapping[str, Key] | None = None  # every entry of this table is a table of these
    data: tuple[str, ...] = ()  # loader keys that apply to these data sections only


@dataclass(frozen=True)
class Section:
    name: str
    keys: Mapping[str, Key]
    call: str  # what the docs say the keys feed
    # "module:name" of the callables whose keyword arguments these keys are, where the keys are
    # written here rather than made from an options class (a test holds them to the signatures)
    api: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # their parameters that a file cannot give
    help: str = ""


def keys_of(options: type[Options]) -> dict[str, Key]:
    """The keys of an options class: one per field, under its name."""
    return {f.name: Key(spec.kind, f.default, spec.help) for f, spec in described(options)}


SOURCES_KEY = Key(
    SOURCES, required=True, flag="SOURCE...", help="files, globs, directories or specs"
)

PREPARE = Section(
    "prepare",
    {
        "sources": SOURCES_KEY,
        "output": Key(
            STRING, required=True, argument="out", flag="-o DIR", help="the dataset directory"
        ),
        **keys_of(PrepareOptions),
    },
    call="`gristmill.prepare`",
    help="Tokenize sources into a dataset directory (`gristmill prepare`).",
)

DATASET_KEYS = {
    "path": Key(STRING, None, "the dataset directory (default: `prepare.output`)"),
    **keys_of(DatasetOptions),
}

DATASET = Section(
    "dataset",
    DATASET_KEYS,
    call="`gristmill.open_dataset`",
    help="A prepared dataset, served as packed samples.",
)

STREAM = Section(
    "stream",
    {"sources": replace(SOURCES_KEY, flag=None), **keys_of(StreamOptions)},
    call="`gristmill.stream`",
    help="Sources tokenized and packed on the fly, nothing written (instead of `[dataset]`).",
)

MIXTURE = Section(
    "mixture",
    {
        "datasets": Key(
            TABLE,
            required=True,
            entries={**DATASET_KEYS, "path": replace(DATASET_KEYS["path"], required=True)},
            help="name → a table of `[dataset]` keys (`path` required)",
        ),
        "weights": Key(WEIGHTS, required=True, help="name → weight (relative)"),
        "num_samples": Key(POSITIVE, None, "entries per epoch"),
        "max_repeat": Key(POSITIVE, None, "times a sample may come per epoch"),
        "seed": Key(INTEGER, 0, "picks the samples; passes on to the sampler"),
    },
    call="`gristmill.mixture`",
    api=("gristmill.serve.mixture:mixture",),
    help="Prepared datasets served in exact proportions per epoch (instead of `[dataset]`).",
)

MAP_STYLE = ("dataset", "mixture")
LOADER = Section(
    "loader",
    {
        "batch_size": Key(POSITIVE, required=True, help="samples per batch on each rank"),
        "sampler": Key(STRING, None, "sampler plugin (default: `distributed`)", data=MAP_STYLE),
        "sampler_options": Key(TABLE, None, "options of the sampler", data=MAP_STYLE),
        "seed": Key(INTEGER, None, "overrides the data's seed"),
        "shuffle": Key(BOOL, True, "a new order of pieces every epoch", data=("stream",)),
        "drop_last": Key(BOOL, False, "serve only whole global batches"),
        "rank": Key(COUNT, None, "this process's rank (default: from torch.distributed or RANK)"),
        "world_size": Key(POSITIVE, None, "number of ranks (default: likewise)"),
        "num_workers": Key(COUNT, 0, "DataLoader worker processes"),
        "node_ranks": Key(
            COUNTS,
            None,
            "the ranks that share this node's cache of a remote dataset (default: this rank alone)",
            data=MAP_STYLE,
        ),
        "pin_memory": Key(BOOL, False, "passed to torch.utils.data.DataLoader"),
        "prefetch_factor": Key(POSITIVE, None, "passed to torch.utils.data.DataLoader"),
        "persistent_workers": Key(BOOL, False, "passed to torch.utils.data.DataLoader"),
    },
    call="`gristmill.torch.dataloader` (`pin_memory`, `prefetch_factor` and `persistent_workers` go on to `torch.utils.data.DataLoader`)",
    api=(
        "gristmill.torch.loader:dataloader",
        "gristmill.torch.loader:DataLoader",
        "gristmill.torch.streaming:StreamLoader",
        "torch.utils.data:DataLoader",
    ),
    ignored=("data", "dataset", "stream", "collate_fn"),
    help="Batches for this rank, resumable (needs torch); collated by `[collator]`.",
)

COLLATOR = Section(
    "collator",
    {
        "padding_free": Key(BOOL, False, "one row with `cu_seqlens` instead of padded rows"),
        "mask": Key(
            one_of("bool", "additive", "flex", "padding"),
            None,
            "an `attention_mask` (none by default: positions, `cu_seq_lens_q`/`_k`, "
            "`use_cache=False`)",
        ),
        "pad_id": Key(COUNT, 0, "token id of padding"),
        "dtype": Key(DTYPE, None, 'the torch dtype of `mask = "additive"` (float32)'),
        "metadata": Key(STRINGS, None, 'metadata keys put per token in `batch["metadata"]`'),
        "block_mask": Key(BOOL, None, "deprecated: `mask`"),
        "hf_names": Key(BOOL, None, "deprecated: batches without a mask carry the names"),
    },
    call="`gristmill.torch.Collator`",
    api=("gristmill.torch.collator:Collator",),
    help="How batches are collated (needs torch).",
)

SECTIONS = {s.name: s for s in (PREPARE, DATASET, STREAM, MIXTURE, LOADER, COLLATOR)}
DATA = ("dataset", "stream", "mixture")  # where the samples come from: one at most


@dataclass(frozen=True)
class Config:
    """A checked config file (see :func:`from_config`). ``sections`` holds the keys each
    section gives, as given: what a file leaves out is left to the API's defaults."""

    path: Path
    sections: Mapping[str, Mapping[str, Any]]

    def prepare(self, **overrides: Any) -> dict[str, Any]:
        """Run :func:`gristmill.prepare` with ``[prepare]`` (and ``overrides``); its manifest."""
        from gristmill.store.prepare import prepare

        options = _arguments(PREPARE, {**self._section("prepare"), **overrides})
        return prepare(options.pop("sources"), options.pop("out"), **options)

    def data(self) -> Dataset | Mixture | Stream:
        """The samples: ``[stream]``, ``[mixture]``, or ``[dataset]`` (whose ``path`` defaults
        to ``prepare.output``; a file with only ``[prepare]`` opens that with the defaults)."""
        if "stream" in self.sections:
            from gristmill.serve.stream import stream

            options = _arguments(STREAM, self.sections["stream"])
            return stream(options.pop("sources"), **options)
        if "mixture" in self.sections:
            from gristmill.serve.mixture import mixture

            options = dict(self.sections["mixture"])
            datasets = {name: _open(table) for name, table in options.pop("datasets").items()}
            return mixture(datasets, options.pop("weights"), **options)
        if "dataset" in self.sections or "prepare" in self.sections:
            return _open(self._dataset())
        raise ConfigError([f"{self.path}: no data: add a [dataset], [stream] or [mixture] section"])

    def collator(self, **overrides: Any) -> Any:
        """A :class:`gristmill.torch.Collator` from ``[collator]`` (and ``overrides``)."""
        import torch

        from gristmill.torch import Collator

        options = {**self.sections.get("collator", {}), **overrides}
        if isinstance(options.get("dtype"), str):
            options["dtype"] = getattr(torch, options["dtype"])
        return Collator(**options)

    def dataloader(self, **overrides: Any) -> Any:
        """:func:`gristmill.torch.dataloader` over :meth:`data` with ``[loader]``, collated by
        :meth:`collator`; ``overrides`` (``rank=``, ``num_workers=``…) win over the file."""
        import gristmill.torch

        options = {**self.sections.get("loader", {}), **overrides}
        if "batch_size" not in options:
            raise ConfigError(
                [f"{self.path}: loader.batch_size: missing; expected {POSITIVE.says}"]
            )
        if "collator" in self.sections:
            options.setdefault("collate_fn", self.collator())
        return gristmill.torch.dataloader(self.data(), **options)

    def _section(self, name: str) -> Mapping[str, Any]:
        if name not in self.sections:
            raise ConfigError([f"{self.path}: no [{name}] section"])
        return self.sections[name]

    def _dataset(self) -> dict[str, Any]:
        table = dict(self.sections.get("dataset", {}))
        table.setdefault("path", self.sections.get("prepare", {}).get("output"))
        return table


def _arguments(section: Section, table: Mapping[str, Any]) -> dict[str, Any]:
    """Keys → keyword arguments (``output`` → ``out``)."""
    renamed = {name: key.argument for name, key in section.keys.items() if key.argument}
    return {renamed.get(name, name): value for name, value in table.items()}


def _open(table: Mapping[str, Any]) -> Dataset:
    from gristmill.serve.dataset import open_dataset

    options = dict(table)
    return open_dataset(options.pop("path"), **options)


def from_config(path: str | os.PathLike[str], **overrides: Mapping[str, Any]) -> Config:
    """Read and check a config file (``.toml``, or ``.yaml``/``.yml`` with PyYAML installed).

    Sections: ``[prepare]``, ``[dataset]`` or ``[stream]`` or ``[mixture]``, ``[loader]``,
    ``[collator]``, each with the keyword arguments of the call it feeds, under the same names
    (docs/configuration.md lists them). ``overrides`` replace keys per section, e.g.
    ``from_config("run.toml", loader={"batch_size": 16})``. Every problem found is raised at
    once in a :class:`ConfigError`, each naming the key's path.

    Example::

        config = gristmill.from_config("run.toml")
        config.prepare()  # gristmill.prepare(**[prepare]); up to date: does nothing
        loader = config.dataloader()  # gristmill.torch.dataloader(config.data(), **[loader])
    """
    return load(path, overrides)


def load(
    path: str | os.PathLike[str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    origin: str = "overrides",
) -> Config:
    """:func:`from_config`, with the ``origin`` that messages name for the ``overrides``."""
    path = Path(path)
    raw = read(path)
    problems = _check(raw, str(path))
    overrides = overrides or {}
    problems += _check(overrides, origin)
    if problems:  # types first: the checks across sections below rely on them
        raise ConfigError(problems)
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        if name in raw or name in overrides:
            merged = {**raw.get(name, {}), **overrides.get(name, {})}
            # YAML's null, or an override of None, is the key left out: the API's default.
            sections[name] = {k: v for k, v in merged.items() if v is not None}
    problems = _check_required(sections, path, origin == COMMAND_LINE)
    problems += _check_across(sections, str(path))
    if problems:
        raise ConfigError(problems)
    problems = _check_options(sections, str(path))
    if problems:
        raise ConfigError(problems)
    return Config(path, sections)


def read(path: Path) -> dict[str, Any]:
    """The file's tables, parsed by its suffix; syntax errors name the file and line."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError([f"{path}: a config file is .toml, .yaml or .yml"])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read it: {exc}"]) from None
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10: tomli, a dependency there
            import tomli as tomllib
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
            raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    else:
        try:
            import yaml
        except ImportError:
            raise MissingDependencyError(
                f"{path}: reading YAML needs PyYAML: pip install 'gristmill[yaml]' "
                "(or write the config as .toml)"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(exc, "problem", None) or exc
            raise ConfigError([f"{path}: invalid YAML{where}: {reason}"]) from None
        if data is None:  # an empty file
            data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of sections at the top, got {_show(data)}"])
    return data


def _check(raw: Mapping[str, Any], origin: str) -> list[str]:
    """Unknown sections and keys, and values of the wrong kind."""
    problems = []
    for name, table in raw.items():
        if name not in SECTIONS:
            problems.append(f"{origin}: {name}: unknown section{_suggest(str(name), SECTIONS)}")
        elif not isinstance(table, Mapping):
            problems.append(f"{origin}: {name}: expected a table of keys, got {_show(table)}")
        else:
            problems += _check_table(table, SECTIONS[name].keys, f"{origin}: {name}")
    return problems


def _check_table(table: Mapping[str, Any], keys: Mapping[str, Key], where: str) -> list[str]:
    problems = []
    for name, value in table.items():
        at = f"{where}.{name}"
        key = keys.get(name)
        if key is None:
            problems.append(f"{at}: unknown key{_suggest(str(name), keys)}")
        elif value is None and key.default is None and not key.required:
            continue  # YAML's null: left out (see load)
        elif not key.kind.accepts(value):
            problems.append(f"{at}: expected {key.kind.says}, got {_show(value)}")
        elif key.entries is not None:
            for entry, sub in value.items():
                if not isinstance(sub, Mapping):
                    problems.append(f"{at}.{entry}: expected a table of keys, got {_show(sub)}")
                    continue
                problems += _check_table(sub, key.entries, f"{at}.{entry}")
                problems += [
                    f"{at}.{entry}.{k}: missing; expected {e.kind.says}"
                    for k, e in key.entries.items()
                    if e.required and k not in sub
                ]
    return problems


def _check_required(
    sections: Mapping[str, Mapping[str, Any]], path: Path, command_line: bool
) -> list[str]:
    problems = []
    for name, table in sections.items():
        for key_name, key in SECTIONS[name].keys.items():
            if key.required and key_name not in table:
                where = f" (or {key.flag} on the command line)" if command_line and key.flag else ""
                problems.append(
                    f"{path}: {name}.{key_name}: missing{where}; expected {key.kind.says}"
                )
    return problems


def _check_across(sections: Mapping[str, Mapping[str, Any]], origin: str) -> list[str]:
    """What no single section can say wrong: one source of samples, paths, weights, loader keys."""
    problems = []
    given = [name for name in DATA if name in sections]
    if len(given) > 1:
        listed = " and ".join(f"[{name}]" for name in given)
        both = "both" if len(given) == 2 else "all"
        problems.append(f"{origin}: {listed} {both} say where the samples come from: keep one")
    dataset = sections.get("dataset", {})
    if "dataset" in sections and "path" not in dataset and "prepare" not in sections:
        problems.append(
            f"{origin}: dataset.path: missing (and no [prepare] section whose output it would be)"
        )
    mixture = sections.get("mixture")
    if mixture:
        names, weights = set(mixture.get("datasets", ())), set(mixture.get("weights", ()))
        problems += [
            f"{origin}: mixture.weights: no weight for dataset {n!r}"
            for n in sorted(names - weights, key=str)
        ]
        problems += [
            f"{origin}: mixture.weights.{n}: no dataset {n!r} in mixture.datasets"
            for n in sorted(weights - names, key=str)
        ]
    if "loader" in sections:
        kind = given[0] if given else "dataset" if "prepare" in sections else None
        if kind is None:
            problems.append(
                f"{origin}: [loader] has no data: add a [dataset], [stream] or [mixture] section"
            )
        for name in sections["loader"]:
            only = LOADER.keys[name].data
            if kind is not None and only and kind not in only:
                allowed = " and ".join(f"[{d}]" for d in only)
                problems.append(f"{origin}: loader.{name}: applies to {allowed} only, not [{kind}]")
    return problems


# The kinds whose options a table may give as KIND_options, beside the key KIND naming the
# component.
OPTIONS_OF = ("packer", "sampler", "executor", "tokenizer")
# source_options are checked at the call: which sources a glob or directory holds is known then.
# What a kind's key left at its API default of None stands for: the loader's sampler is
# "distributed"; a tokenizer is the presets' (checked at the call), else byte.
UNSET_MEANS = {"sampler": "distributed", "tokenizer": DEFAULT_TOKENIZER}


def _check_options(sections: Mapping[str, Mapping[str, Any]], origin: str) -> list[str]:
    """Each ``*_options`` table against the options its component declares, with the component
    the table's section names (or the API's default), so that a misspelt option fails here."""
    tables = [(name, SECTIONS[name].keys, table) for name, table in sections.items()]
    for entry, table in sections.get("mixture", {}).get("datasets", {}).items():
        tables.append((f"mixture.datasets.{entry}", DATASET_KEYS, table))
    problems = []
    for where, keys, table in tables:
        for kind in OPTIONS_OF:
            options_key = f"{kind}_options"
            if options_key not in table:
                continue
            name = table.get(kind, keys[kind].default or UNSET_MEANS[kind])
            try:
                _component(kind, name).check_options(table[options_key])
            except GristmillError as exc:
                problems.append(f"{origin}: {where}.{options_key}: {exc}")
    return problems


def _component(kind: str, name: str) -> Component:
    from gristmill.ingest.tokenizers import resolve_tokenizer
    from gristmill.plugin.manager import get_manager

    manager = get_manager()
    if kind == "tokenizer":
        return resolve_tokenizer(name, manager)
    return manager.get(next(t for t in RECORD_TYPES if t.kind == kind), name)


def _suggest(name: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    if close:
        return f"; did you mean {close[0]}?"
    return f"; expected one of {', '.join(choices)}"


def _show(value: Any) -> str:
    """A value as the file spells it, short."""
    if isinstance(value, Mapping):
        return "a table"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def reference() -> str:
    """The keys of every section as Markdown tables (docs/configuration.md holds this text)."""
    out = []
    for section in SECTIONS.values():
        out += [f"### `[{section.name}]`", "", f"{section.help} Keywords of {section.call}.", ""]
        out += ["| key | takes | default | meaning |", "| --- | --- | --- | --- |"]
        for name, key in section.keys.items():
            takes = "a table of tables" if key.entries else key.kind.says
            if key.required:
                default = "required"
            else:
                default = "—" if key.default is None else f"`{_show(key.default)}`"
            meaning = key.help
            if key.data:
                meaning += f" ({' and '.join(f'`[{d}]`' for d in key.data)} only)"
            out.append(f"| `{name}` | {takes} | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)
