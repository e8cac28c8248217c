"""The options of gristmill's calls, each declared once, here.

One frozen dataclass per call: :class:`PrepareOptions` (:func:`gristmill.prepare`),
:class:`StreamOptions` (:func:`gristmill.stream`), :class:`ConvertOptions`
(:func:`gristmill.store.convert.convert`) and :class:`DatasetOptions`
(:func:`gristmill.open_dataset`), made of shared groups: :class:`ReadingOptions` (records →
examples), :class:`EncodingOptions` (examples → token documents), both together
:class:`DocumentOptions`, and :class:`PackingOptions` (documents → samples). Values are checked,
and made plain (a numpy integer becomes an ``int``), when the object is made: a call refuses a
bad value before it reads or writes anything.

Each field's metadata (:func:`option`) says which values it takes (a :class:`Kind`), its help,
its flag on the command line and whether it changes the output. From the fields come the calls'
keyword signatures (:func:`takes`), the keys of a config file (:mod:`gristmill.config`; a
field's name is its key), the command line's flags (:mod:`gristmill.cli.main`) and what an
output's fingerprint is made of (:meth:`Options.output`): an option added here is in all of them.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from gristmill.errors import DataError, DatasetError, GristmillError
from gristmill.plugin.arguments import check_int, is_integer
from gristmill.plugin.components import DEFAULT_MAX_RECORD_BYTES
from gristmill.plugin.overlong import NO_LOSS
from gristmill.plugin.overlong import POLICIES as OVERLONG_POLICIES

ERROR_POLICIES = ("fail", "skip")  # stop at the first bad record, or count and set it aside
LABELS = ("unshifted", "shifted")  # labels as Hugging Face models take them, or input/target pairs

DEFAULT_TOKENS_PER_SHARD = 1 << 26  # 64 Mi tokens: 128 MiB per shard at uint16
DEFAULT_TASK_BYTES = 16 << 20  # input per task: enough to amortise it, small enough to balance
DEFAULT_CHUNK_BYTES = 1 << 20  # a worker's unit: large enough to amortise reading a piece of file
DEFAULT_PIECE_BYTES = 32 << 20  # packing restarts once per piece: rare enough to cost ~nothing


@dataclass(frozen=True)
class Kind:
    """The values an option takes.

    ``says`` completes "expected ..." in a config file's error; ``accepts`` judges a config
    file's value; ``plain`` checks a call's value and gives its plain form, raising the error
    that names the option; ``empty`` makes what ``None`` stands for where the default is
    ``None`` (an empty table); ``read`` turns the command line's text into a value; ``choices``
    are the values of a choice.
    """

    says: str
    accepts: Callable[[Any], bool]
    plain: Callable[[str, Any], Any] | None = None
    empty: Callable[[], Any] | None = None
    read: Callable[[str], Any] | None = None
    choices: tuple[str, ...] = ()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def integer(at_least: int | None, says: str) -> Kind:
    return Kind(
        says,
        lambda v: is_integer(v) and (at_least is None or v >= at_least),
        plain=lambda name, v: check_int(name, v, at_least=at_least),
        read=int,
    )


def one_of(*choices: str, error: type[GristmillError] = DataError) -> Kind:
    says = f"one of {', '.join(choices)}"

    def plain(name: str, value: Any) -> Any:
        if value not in choices:
            raise error(f"{name} must be {says}, got {value!r}")
        return value

    return Kind(says, lambda v: isinstance(v, str) and v in choices, plain=plain, choices=choices)


def _fraction(name: str, value: Any) -> float:
    value = float(value)  # a plain float: a numpy scalar would not serialise into the manifest
    if not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {value}")
    return value


STRING = Kind("a string", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
INTEGER = integer(None, "an integer")
COUNT = integer(0, "a non-negative integer")
POSITIVE = integer(1, "a positive integer")
TWO_OR_MORE = integer(2, "an integer of at least 2")
FRACTION = Kind(
    "a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1, plain=_fraction, read=float
)
STRINGS = Kind(
    "a list of strings",
    is_strings,
    plain=lambda name, v: list(v) if v else None,
    read=lambda text: text.split(",") if text else None,
)
COUNTS = Kind(
    "a list of non-negative integers",
    lambda v: (
        isinstance(v, (list, tuple))
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v)
    ),
)
TABLE = Kind("a table", lambda v: isinstance(v, Mapping), plain=lambda name, v: dict(v), empty=dict)
STRING_TABLE = Kind(
    "a table of strings",
    lambda v: isinstance(v, Mapping) and all(isinstance(s, str) for s in v.values()),
    plain=lambda name, v: dict(v),
    empty=dict,
)


@dataclass(frozen=True)
class Flag:
    """How the command line spells an option: ``--the-name`` unless ``name`` says otherwise.
    ``help`` may say ``{default}``; ``read`` replaces the kind's."""

    help: str
    metavar: str | None = None
    name: str | None = None
    read: Callable[[str], Any] | None = None
    repeat: bool = False  # the flag may be given again; a table gets its (name, value) pairs


def name_value(text: str) -> tuple[str, Any]:
    """The command line's ``NAME=VALUE``: the value read as JSON where it is JSON (``true``,
    ``8``, ``[1, 2]``), else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


WHEN_GIVEN = "when given"  # Option.output: in the fingerprint only when not empty


@dataclass(frozen=True)
class Option:
    """A field's metadata: ``help`` is one line of Markdown (the config reference's);
    ``output``: whether the option changes the output (True, False or ``WHEN_GIVEN``: a table
    left empty leaves fingerprints as they were before it existed)."""

    kind: Kind
    help: str
    flag: Flag | None = None
    output: bool | str = False


OPTION = "gristmill.option"


def option(
    default: Any,
    kind: Kind,
    help: str,
    *,
    flag: Flag | None = None,
    output: bool | str = False,
    secret: bool = False,
) -> Any:
    """A field of an options dataclass (see :class:`Option`). ``secret``: left out of the
    options' repr, for a value that may hold credentials, which no message or log shows."""
    return field(
        default=default, repr=not secret, metadata={OPTION: Option(kind, help, flag, output)}
    )


def described(options: Options | type[Options]) -> list[tuple[Field[Any], Option]]:
    """The fields of an options class (or object) with their metadata, in order."""
    return [(f, f.metadata[OPTION]) for f in fields(options)]


@dataclass(frozen=True)
class Options:
    """The base of the options dataclasses: checks every value when made."""

    def __post_init__(self) -> None:
        for f, spec in described(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                value = spec.kind.empty() if spec.kind.empty else None
            elif spec.kind.plain is not None:
                value = spec.kind.plain(f.name, value)
            object.__setattr__(self, f.name, value)

    def output(self) -> dict[str, Any]:
        """The values of the options that change the output, by name."""
        return {
            f.name: getattr(self, f.name)
            for f, spec in described(self)
            if spec.output is True or (spec.output == WHEN_GIVEN and getattr(self, f.name))
        }


@dataclass(frozen=True)
class EncodingOptions(Options):
    """How examples become token documents."""

    # None until the run is resolved: then the preset's tokenizer, else byte
    # (gristmill.ingest.sources.with_preset_defaults).
    tokenizer: str | None = option(
        None,
        STRING,
        "`byte`, `hf:NAME_OR_DIR`, `PATH/tokenizer.json`… (default: a preset's, else `byte`)",
        flag=Flag("tokenizer (default: the preset's tokenizer, else byte)", metavar="SPEC"),
        output=True,
    )
    engine: str = option(
        "auto",
        STRING,
        "the tokenizer's encoding engine (never changes the ids)",
        flag=Flag(
            "tokenizer engine: auto (default: the fastest installed one whose ids match the "
            "reference on the first batch), hf (the reference), or another the tokenizer offers",
            metavar="NAME",
        ),
    )
    tokenizer_options: Mapping[str, Any] = option(
        None,
        TABLE,
        "options of the tokenizer, e.g. `{add_bos = true}` for `byte`",
        output=WHEN_GIVEN,
    )
    train_on_prompt: bool = option(
        False,
        BOOL,
        "loss on prompts too, not only completions",
        flag=Flag("put loss on prompts too, not only completions"),
        output=True,
    )
    max_doc_tokens: int | None = option(
        None,
        TWO_OR_MORE,
        "truncate documents to this many tokens",
        flag=Flag(
            "truncate documents to N tokens (the EOS kept last); counted in the manifest",
            metavar="N",
        ),
        output=True,
    )


@dataclass(frozen=True)
class ReadingOptions(Options):
    """How sources are read and their records mapped to examples."""

    format: str = option(
        "auto",
        STRING,
        "field mapper: `auto`, `chat`, `prompt-completion`, `text`…",
        flag=Flag(
            "field mapper: auto (default: chosen from each source's first record), chat, "
            "prompt-completion, text, or one a plugin adds",
            metavar="NAME",
        ),
        output=True,
    )
    fields: Mapping[str, str] = option(
        None,
        STRING_TABLE,
        'canonical field → column, e.g. `{prompt = "question"}`',
        flag=Flag(
            "read canonical fields from other columns, e.g. prompt=question,completion=answer",
            metavar="NAME=COLUMN,...",
        ),
        output=True,
    )
    normalize: bool = option(
        True,
        BOOL,
        "Unicode NFC normalisation of all text",
        flag=Flag(
            "Unicode NFC normalisation of all text (default: on; --no-normalize for code "
            "or data whose exact code points matter)"
        ),
        output=True,
    )
    on_error: str = option(
        "fail",
        one_of(*ERROR_POLICIES),
        "stop at a bad record, or skip and count it",
        flag=Flag(
            "fail: stop at the first bad record, naming file, line and field (default); "
            "skip: count bad records per reason, write them beside the output "
            "(OUTPUT.rejects.jsonl), go on"
        ),
        output=True,
    )
    max_record_bytes: int = option(
        DEFAULT_MAX_RECORD_BYTES,
        POSITIVE,
        "larger records are rejected",
        flag=Flag(
            "a record larger than this is rejected instead of read (default: {default})",
            metavar="N",
        ),
        output=True,
    )
    column_names: Sequence[str] | None = option(
        None,
        STRINGS,
        "column names of CSV/TSV files without a header row",
        flag=Flag("column names for CSV/TSV files without a header row", metavar="NAME,..."),
        output=True,
    )
    metadata_columns: Sequence[str] | None = option(
        None,
        STRINGS,
        "record columns kept per document as metadata, beside its `metadata` object",
        flag=Flag(
            "keep these record columns per document as metadata, beside the record's "
            "metadata object (served with each document and packed segment)",
            metavar="NAME,...",
        ),
        output=WHEN_GIVEN,
    )
    source_options: Mapping[str, Any] = option(
        None,
        TABLE,
        'options of every source, e.g. `{columns = ["text"]}` for `parquet`',
        flag=Flag(
            "an option of the sources (`gristmill plugins --all` lists them), e.g. "
            "unit=paragraph for text files; VALUE is read as JSON where it is JSON (true, 8, "
            '["text"]), else as text; repeat for several',
            metavar="NAME=VALUE",
            name="--source-option",
            read=name_value,
            repeat=True,
        ),
        output=WHEN_GIVEN,
    )


@dataclass(frozen=True)
class DocumentOptions(ReadingOptions, EncodingOptions):
    """How records become token documents: what prepare and stream share (the ingest chain's)."""


@dataclass(frozen=True)
class PackingOptions(Options):
    """How token documents are packed into samples."""

    seq_len: int | None = option(None, POSITIVE, "tokens per sample", output=True)
    packer: str = option(
        "none", STRING, "`none`, `first-fit`, `greedy-stream`, `concat-chunk`…", output=True
    )
    packer_options: Mapping[str, Any] = option(
        None, TABLE, "options of the packer, e.g. `{buffer_size = 64}`", output=True
    )
    overlong: str = option(
        "truncate",
        one_of(*OVERLONG_POLICIES, error=DatasetError),
        "documents longer than `seq_len`",
        output=True,
    )
    restart: bool | None = option(
        None, BOOL, "positions and labels restart at every document (the packer's)", output=True
    )
    labels: str = option(
        "unshifted",
        one_of(*LABELS, error=DatasetError),
        "`shifted`: input/target pairs for a plain loop",
        output=True,
    )
    segment_metadata: Sequence[str] | None = option(
        None,
        STRINGS,
        'metadata keys served with each sample, per segment (`sample["metadata"]`)',
    )


@dataclass(frozen=True)
class DatasetOptions(PackingOptions):
    """:func:`gristmill.open_dataset`'s options."""

    split: str = option(
        "train", STRING, "the split to serve: `train`, `val` or `test`", output=True
    )
    no_loss: str = option(
        "keep",
        one_of(*NO_LOSS, error=DatasetError),
        "samples whose labels are all -100: `drop` them",
        output=True,
    )
    seed: int = option(0, INTEGER, "seed of the samplers")
    # How a remote dataset (`s3://`, `gs://`, `https://`…) is fetched: never its samples.
    storage_options: Mapping[str, Any] = option(
        None,
        TABLE,
        "a remote dataset's filesystem options (fsspec's), e.g. `{anon = true}` or an "
        "endpoint; credentials are best left to the filesystem's own environment and files",
        secret=True,
    )
    cache_limit: int | None = option(
        None,
        POSITIVE,
        "bytes of a remote dataset kept in the local cache (default: "
        "`GRISTMILL_REMOTE_CACHE_LIMIT`, else no limit)",
    )
    prefetch: int | None = option(
        None,
        COUNT,
        "shards of a remote dataset that the torch loader fetches ahead of its reads, in the "
        "schedule's order (default: 4; 0: none)",
    )


def _ray_address(address: str) -> dict[str, str]:
    return {"address": address}


@dataclass(frozen=True)
class PrepareOptions(DocumentOptions):
    """:func:`gristmill.prepare`'s options."""

    val_fraction: float = option(
        0.0,
        FRACTION,
        "share of documents for the `val` split",
        flag=Flag(
            "fraction of examples (chosen by a seeded hash) for the 'val' split (default: 0)",
            metavar="F",
        ),
        output=True,
    )
    # Fingerprinted only when given, as the options after it: datasets prepared without them
    # keep the fingerprint they had before the options existed.
    test_fraction: float = option(
        0.0,
        FRACTION,
        "share of documents for the `test` split (with `val_fraction`, at most 1)",
        flag=Flag(
            "fraction of examples (chosen by the same hash, never those of val) for the 'test' "
            "split (default: 0)",
            metavar="F",
        ),
        output=WHEN_GIVEN,
    )
    keep_source_splits: bool = option(
        False,
        BOOL,
        "keep the sources' own splits: a Hub dataset's or `DatasetDict`'s, files named "
        "`train.*`, `val.*`/`validation.*`/`dev.*`, `test.*`",
        flag=Flag(
            "keep the sources' own splits: a Hub dataset's or a saved DatasetDict's train, "
            "validation and test, files or folders named train.*, val.*/validation.*/dev.*, "
            "test.*; the fractions take their share from train and sources of no split"
        ),
        output=WHEN_GIVEN,
    )
    seed: int = option(
        0,
        INTEGER,
        "seed of the hash that chooses the `val` and `test` documents",
        flag=Flag("seed of the hash that chooses the val and test documents (default: 0)"),
        output=True,
    )
    tokens_per_shard: int = option(
        DEFAULT_TOKENS_PER_SHARD,
        POSITIVE,
        "tokens per shard file",
        flag=Flag(
            "target tokens per shard file; documents are never split (default: {default})",
            metavar="N",
        ),
        output=True,
    )
    shard_format: str = option("memmap-shards", STRING, "the shard format plugin", output=True)
    dedup: bool = option(
        False,
        BOOL,
        "drop exact duplicate documents",
        flag=Flag("drop exact duplicate documents (same tokens and loss mask); keeps the first"),
        output=True,
    )
    workers: int | None = option(
        None,
        POSITIVE,
        "worker processes (default: one per CPU)",
        flag=Flag(
            "worker processes (default: one per CPU); the output is the same for any N",
            metavar="N",
        ),
    )
    executor: str = option(
        "local",
        STRING,
        "where tasks run",
        flag=Flag(
            "where tasks run: local (default: this machine), ray (Ray tasks; pip install "
            "'gristmill[ray]'), or one a plugin adds (docs/executors.md)",
            metavar="NAME",
        ),
    )
    executor_options: Mapping[str, Any] = option(
        None,
        TABLE,
        'options of the executor, e.g. `{address = "HOST:PORT"}` for `ray` (`--ray-address`)',
        flag=Flag(
            "run on this Ray cluster (HOST:PORT, ray://HOST:10001, auto); implies --executor "
            "ray; every node must see the output directory (default: RAY_ADDRESS, else a Ray "
            "of --workers CPUs started here)",
            metavar="ADDR",
            name="--ray-address",
            read=_ray_address,
        ),
    )
    task_bytes: int = option(
        DEFAULT_TASK_BYTES,
        POSITIVE,
        "input bytes per task",
        flag=Flag(
            "input bytes per task, the unit of parallel work and of resuming after a crash "
            "(default: {default})",
            metavar="N",
        ),
        output=True,
    )
    overwrite: bool = option(
        False,
        BOOL,
        "replace a different or unfinished dataset",
        flag=Flag(
            "replace a different existing dataset, or discard an unfinished one (only the "
            "files gristmill wrote: a directory that also holds others is refused, naming them)"
        ),
    )
    progress: bool | None = option(
        None,
        BOOL,
        "show a progress bar (default: only on a terminal)",
        flag=Flag("show a progress bar (default: only on a terminal)"),
    )
    # How an output at a URL is written: never what is written.
    storage_options: Mapping[str, Any] = option(
        None,
        TABLE,
        "an output URL's filesystem options (fsspec's), e.g. an endpoint; credentials are best "
        "left to the filesystem's own environment and files",
        flag=Flag(
            "an option of the output URL's filesystem (fsspec's), e.g. "
            'client_kwargs={"endpoint_url": "http://HOST:9000"}; VALUE is read as JSON where it '
            "is JSON, else as text; repeat for several",
            metavar="NAME=VALUE",
            name="--storage-option",
            read=name_value,
            repeat=True,
        ),
        secret=True,
    )
    keep_scratch: bool = option(
        False,
        BOOL,
        "keep the local copy of a dataset prepared to a URL (in gristmill's cache folder) "
        "once it is uploaded",
        flag=Flag(
            "with -o URL: keep the local copy the dataset is prepared in (in gristmill's cache "
            "folder, named in the log) once it is uploaded"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_fraction + self.test_fraction > 1:
            raise DataError(
                f"val_fraction + test_fraction must be at most 1 (a document goes to one split), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )


@dataclass(frozen=True)
class StreamOptions(PackingOptions, DocumentOptions):
    """:func:`gristmill.stream`'s options."""

    packer: str = option(
        "greedy-stream", STRING, "`greedy-stream`, `window`, `concat-chunk` or `none`", output=True
    )
    chunk_bytes: int = option(
        DEFAULT_CHUNK_BYTES, POSITIVE, "input bytes per unit of work", output=True
    )
    piece_bytes: int = option(
        DEFAULT_PIECE_BYTES, POSITIVE, "input bytes per independently packed piece", output=True
    )

    # A loader's saved state names its stream's identity, and a run resumes only where they
    # match: so the identity keeps being made of what it always was. The cut into pieces, in
    # it beside these options, stands for chunk_bytes and piece_bytes.
    IDENTITY_LEAVES_OUT: ClassVar[tuple[str, ...]] = (
        "on_error",
        "max_record_bytes",
        "column_names",
        "chunk_bytes",
        "piece_bytes",
    )
    IDENTITY_ADDS: ClassVar[tuple[str, ...]] = ("engine",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.chunk_bytes <= self.piece_bytes:
            raise DataError(
                f"chunk_bytes and piece_bytes must satisfy 1 <= chunk_bytes <= piece_bytes, got "
                f"{self.chunk_bytes} and {self.piece_bytes}"
            )

    def identity(self) -> dict[str, Any]:
        """The options a stream's identity is made of, by name."""
        described = self.output()
        for name in self.IDENTITY_LEAVES_OUT:
            described.pop(name, None)
        return {**described, **{name: getattr(self, name) for name in self.IDENTITY_ADDS}}


@dataclass(frozen=True)
class ConvertOptions(ReadingOptions):
    """:func:`gristmill.store.convert.convert`'s options."""

    overwrite: bool = option(
        False,
        BOOL,
        "replace an existing output file",
        flag=Flag("replace an existing output file"),
    )


Result = TypeVar("Result")


def takes(
    options_type: type[Options], *, positional: tuple[str, ...] = ()
) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """The public form of a call written as ``function(ARGUMENTS, options, *, KEYWORDS)``: it
    takes the fields of ``options_type`` as keyword arguments (those in ``positional`` also by
    position, after ``ARGUMENTS``) and makes the options object before ``function`` runs. Its
    signature (``inspect.signature``, ``help()``) lists the fields with their defaults, and a
    wrong argument raises the ``TypeError`` a plain signature would."""

    def wrap(function: Callable[..., Result]) -> Callable[..., Result]:
        own = inspect.signature(function)
        leading = [p for p in own.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        trailing = [p for p in own.parameters.values() if p.kind is p.KEYWORD_ONLY]
        by_name = {f.name: f for f in fields(options_type)}

        def parameter(f: Field[Any], kind: Any) -> inspect.Parameter:
            return inspect.Parameter(f.name, kind, default=f.default, annotation=f.type)

        signature = own.replace(
            parameters=[
                *(p for p in leading if p.name != "options"),
                *(
                    parameter(by_name[n], inspect.Parameter.POSITIONAL_OR_KEYWORD)
                    for n in positional
                ),
                *(
                    parameter(f, inspect.Parameter.KEYWORD_ONLY)
                    for f in by_name.values()
                    if f.name not in positional
                ),
                *trailing,
            ]
        )

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Result:
            try:
                arguments = signature.bind(*args, **kwargs).arguments
            except TypeError as exc:
                raise TypeError(f"{function.__name__}() {exc}") from None
            given = {name: arguments.pop(name) for name in list(arguments) if name in by_name}
            return function(**arguments, options=options_type(**given))

        call.__signature__ = signature  # type: ignore[attr-defined]
        return call

    return wrap
