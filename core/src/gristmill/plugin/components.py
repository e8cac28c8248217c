"""Typed records that plugins register, and the protocols their factories return.

A registration hook returns a list of these records. Each carries a unique user-facing ``name``
(lowercase letters, digits and dashes), a one-line ``description``, when the component needs a
heavy optional library the ``requires`` extra that installs it, and the ``options`` the user may
give it. The plugin manager validates them and keeps track of which plugin provided which record.

Two kinds of keyword reach a component's factory: the *context* gristmill passes itself (a
source's ``max_record_bytes``, a packer's ``overlong``, a sampler's ``seed``…, listed per kind
below), and the *options* the user gives in a dict (``packer_options``, ``source_options``…).
Only declared options pass: :meth:`Component.check_options` refuses any other key, naming the
closest declared one, before the factory is called. Factories still take ``**context`` for the
context keywords later versions of gristmill may add.

What a component may do beyond its kind's protocol (a source's ``schema()``, a tokenizer's
``render_chat()``, a packer's ``online()``…) is a runtime-checkable protocol of its own
(:class:`HasSchema`, :class:`RendersChat`, :class:`PacksOnline`…): gristmill asks
``isinstance(obj, RendersChat)``, and a plugin offers the capability by defining the method.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from gristmill.errors import OptionError
from gristmill.plugin.examples import Example

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True, kw_only=True)
class Component:
    """Fields every registered component has."""

    name: str
    description: str
    requires: str | None = None  # the extra that installs what it needs, e.g. "parquet"
    # The options a user may give: name (a Python identifier) -> one-line description.
    options: Mapping[str, str] = field(default_factory=dict, hash=False)
    # The option a number ending the name sets: with ``number_option="window"``, ``window-16``
    # and ``window_16`` name this component with ``window=16`` (:meth:`PluginManager.get`).
    number_option: str | None = None
    # The options the name as typed set (``window_16``: ``{"window": 16}``); the manager fills
    # this in, a plugin leaves it empty. :meth:`check_options` adds them to the user's.
    named_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    kind: ClassVar[str] = "component"  # what the messages call it: "source", "field mapper"…
    creates: ClassVar[str] = ""  # the field holding the callable that receives the options
    # Derived from ``kind`` for every record type: its key in the registry and in ``gristmill
    # plugins --json`` ("sources", "field_mappers"…), and the hook that registers it.
    plural: ClassVar[str] = "components"
    hook: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.plural = cls.kind.replace(" ", "_") + "s"
        cls.hook = f"gristmill_{cls.plural}"

    def problems(self) -> list[str]:
        """What is wrong with this record (empty when it is valid)."""
        out = []
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            out.append(
                f"{self.kind} name {self.name!r} is invalid: use lowercase letters, digits and "
                "single dashes, starting with a letter"
            )
        if not isinstance(self.description, str) or not self.description.strip():
            out.append(f"{self.kind} {self.name!r} has no description")
        return out + self._option_problems()

    def _option_problems(self) -> list[str]:
        what = f"{self.kind} {self.name!r}"
        if self.options and not self.creates:
            return [f"{what}: a {self.kind} takes no options"]
        if not isinstance(self.options, Mapping):
            return [f"{what}: options must map each name to a one-line description"]
        out = []
        if self.number_option is not None and self.number_option not in self.options:
            out.append(
                f"{what}: its number_option {self.number_option!r} is not an option it declares"
            )
        for name, text in self.options.items():
            if not isinstance(name, str) or not name.isidentifier():
                out.append(f"{what}: option name {name!r} is invalid: use a Python identifier")
            elif not isinstance(text, str) or not text.strip():
                out.append(f"{what}: option {name!r} has no description")
            elif self.creates and not _takes(getattr(self, self.creates), name):
                out.append(
                    f"{what} declares option {name!r} but its {self.creates} does not take it"
                )
        return out

    def check_options(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The user's ``given`` options as a dict, once every key is one this component declares.

        Raises :class:`~gristmill.errors.OptionError` naming the component, the unknown key, the
        closest declared name and every declared one: a misspelt option must never be ignored.
        The options the name set (``named_options``) are added; one given again with another
        value is an error, since either choice would ignore the other.
        """
        given = dict(given or {})
        for key in given:
            if key not in self.options:
                raise OptionError(self._unknown(key))
        for key, value in self.named_options.items():
            if key in given and given[key] != value:
                raise OptionError(
                    f"{self.kind} name {self.name}-{value} sets {key}={value!r}, but the "
                    f"options give {key}={given[key]!r}: give it in one place"
                )
            given[key] = value
        return given

    def _unknown(self, key: Any) -> str:
        message = f"{self.kind} {self.name!r} has no option {key!r}"
        if not self.options:
            return f"{message}: it takes no options"
        import difflib  # on the error path only

        close = difflib.get_close_matches(str(key), list(self.options), n=1)
        hint = f"; did you mean {close[0]}?" if close else "."
        valid = "; ".join(f"{name} ({text})" for name, text in self.options.items())
        return f"{message}{hint} It takes: {valid}"


def _takes(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` accepts the keyword ``name`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: cannot tell, trust it
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


# --- sources -------------------------------------------------------------------------------------


class Where(NamedTuple):
    """Where a record came from, for error messages: a file (or URL) and a 1-based line or row."""

    origin: str
    line: int | None = None
    unit: str = (
        "line"  # "line": a physical line of a text file (JSON, CSV); "row": Parquet/Hub rows
    )

    def __str__(self) -> str:
        if self.line is None:
            return self.origin
        return (
            f"{self.origin}:{self.line}"
            if self.unit == "line"
            else f"{self.origin}: row {self.line}"
        )


class Rejected(NamedTuple):
    """A record a source could not read, yielded in its place so that the error policy decides.

    ``reason`` is a short stable key for counting (``malformed-json``, ``not-utf8``,
    ``too-large``, ``ragged-row``…); ``message`` says what is wrong and how to fix it; ``raw`` is
    the record's text when there is one, for the reject file; ``rows``: how many input records
    this stands for (a damaged Parquet row group whose rows the footer counts).
    """

    reason: str
    message: str
    where: Where
    raw: str | None = None
    field: str | None = None
    rows: int = 1


class PassedOver(NamedTuple):
    """Units a source leaves out by a rule of its format or of an option the user chose (a blank
    line of a text file, a line seen before): not errors, so neither policy stops or writes them
    to the reject file, but counted per ``reason`` (``blank-line``, ``duplicate-line``…) in the
    manifest's ``provenance.passed_over``. ``rows``: how many units this stands for, so that a
    source may yield one per reason at the end of a piece instead of one per unit."""

    reason: str
    where: Where
    rows: int = 1


DEFAULT_MAX_RECORD_BYTES = 64 << 20


class Source(Protocol):
    """An opened source: yields raw records with their location, and splits into pieces.

    ``factory(spec, *, max_record_bytes, column_names, **context)`` opens one, with the user's
    declared ``source_options`` among the keywords. Context gristmill passes: ``max_record_bytes``
    (a record larger than this is rejected with reason ``too-large`` instead of read into memory)
    and ``column_names`` (names for the columns of header-less tables, or ``None``); a source
    ignores context it does not use.

    Optional capabilities: :class:`HasSchema` (a tabular source's columns, checked to agree
    across the files of one source type), :class:`HasSize` (the bytes a source that is not
    one local file reads) and :class:`HasSplits` (the data's own named splits). Sources pickle:
    prepare's workers receive the pieces ``split`` returns.
    """

    spec: str

    def records(self) -> Iterator[tuple[dict[str, Any], Where] | Rejected | PassedOver]:
        """Yield every record, or a :class:`Rejected` in its place, in a deterministic order;
        units left out on purpose are counted by yielding :class:`PassedOver`.

        Raise :class:`~gristmill.errors.DataError` only when reading cannot go on at all (a
        truncated archive, an unreadable file); under ``--on-error skip`` gristmill counts it and
        keeps the records read before it.
        """
        ...

    def split(self, pieces: int) -> Sequence[Source]:
        """At most ``pieces`` disjoint sources, in order, whose records together are this one's.

        Split by what the format allows (byte ranges of a text file, row groups); a source that
        cannot split returns ``[self]``.
        """
        ...

    def fingerprint(self) -> str:
        """A string that changes whenever the data would change (e.g. a hash of the content)."""
        ...


@runtime_checkable
class HasSchema(Protocol):
    """A source that describes its columns: gristmill then checks that every file read by that
    source type in one run has the same schema, with one clear message per file that drifts."""

    def schema(self) -> dict[str, str]:
        """Column name → type name."""
        ...


@runtime_checkable
class HasSize(Protocol):
    """A source that is not one local file (its ``spec`` is not a path) saying about how many
    bytes it reads: prepare cuts its input into tasks by size."""

    def nbytes(self) -> int: ...


@runtime_checkable
class HasSplits(Protocol):
    """A source over data that comes in named splits of its own (a Hub dataset's ``train``,
    ``validation`` and ``test``; a ``DatasetDict`` folder's): when the user asks to keep the
    sources' splits (``keep_source_splits``), gristmill reads each split as a source of its own
    into the dataset's split of that name. Without it, gristmill never asks."""

    def named_splits(self) -> Mapping[str, Source]:
        """Split name, as the data names it → a source over that split alone, in the data's
        order: every split the data has, or only the one the user named (``hub:NAME#test``).
        Empty when the data has no named splits (a plain ``Dataset`` folder, a file): its
        file name then decides, as for any file."""
        ...


@dataclass(frozen=True, kw_only=True)
class SourceType(Component):
    """A source of raw records: claims specs by prefix (``sample:``) or file suffix (``.jsonl``),
    and directories by the files that mark them (``markers``)."""

    factory: Callable[..., Source]  # (spec, **context, **options)
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()  # without compression: ".jsonl" also claims ".jsonl.gz/.zst"
    # File names that make a directory holding one of them a single source of this type (a
    # folder that ``datasets`` saved), opened with the directory as its spec, instead of a
    # folder whose files are read one by one.
    markers: tuple[str, ...] = ()
    # For a source whose records hold token ids of its own making (``synthetic:``):
    # ``tokenizer(spec, **options)`` names the tokenizer those ids belong to (``ids:1000``),
    # the run's tokenizer when neither the user nor a preset names one.
    tokenizer: Callable[..., str] | None = None

    kind = "source"
    creates = "factory"

    def problems(self) -> list[str]:
        out = super().problems()
        if not self.prefixes and not self.suffixes and not self.markers:
            out.append(f"source {self.name!r} claims no prefix, file suffix or folder marker")
        return out


# --- field mappers -------------------------------------------------------------------------------


FieldMap = Callable[[Mapping[str, Any]], Example]


@dataclass(frozen=True, kw_only=True)
class FieldMapperType(Component):
    """Turns a raw record into an :class:`~gristmill.plugin.examples.Example`.

    ``detect(keys)`` says whether records with these keys look like this format; among the mappers
    that accept, the highest ``priority`` wins. ``factory(fields)`` returns the mapping function;
    ``fields`` maps canonical names (``text``, ``prompt``…) to the user's column names, and only
    the canonical names listed in ``fields`` here are accepted.
    """

    factory: Callable[[Mapping[str, str]], FieldMap]
    detect: Callable[[Collection[str]], bool]
    fields: tuple[str, ...] = ()
    priority: int = 0

    kind = "field mapper"


# --- tokenizers ----------------------------------------------------------------------------------


class Tokenizer(Protocol):
    """A loaded tokenizer. ``encode_batch`` is the hot path: it takes many texts at once.

    ``encode_batch`` returns the text's own tokens only; gristmill adds ``bos_id`` before a
    document when ``add_bos`` and ``eos_id`` after it when ``add_eos`` (not when the text's tokens
    already start with that BOS or end with that EOS). Its ids and flags are read, never set, by
    gristmill (an attribute or a property serves).

    Optional capabilities: :class:`RendersChat` (a chat template of its own) and
    :class:`HasFingerprint` (a string that changes whenever its ids, special tokens or chat
    rendering could).
    """

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def pad_id(self) -> int | None: ...
    @property
    def add_bos(self) -> bool: ...
    @property
    def add_eos(self) -> bool: ...

    def encode_batch(
        self, texts: Sequence[str], *, offsets: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Token ids per text, and (when asked) the character offset where each token starts."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the ids; special tokens shown by name."""
        ...

    def save(self, directory: Path) -> dict[str, Any]:
        """Write what ``TokenizerType.load`` needs into ``directory``; return its JSON config."""
        ...


@runtime_checkable
class RendersChat(Protocol):
    """A tokenizer with a chat template of its own: chat examples are rendered by it instead of
    by the built-in template of :meth:`~gristmill.plugin.examples.Example.render`."""

    def render_chat(
        self, messages: tuple[tuple[str, str], ...], *, train_on_prompt: bool = False
    ) -> tuple[str, tuple[tuple[int, int], ...]]:
        """The text to tokenize and the sorted, disjoint ``(start, end)`` character spans that
        carry loss (the assistant turns, or the whole text with ``train_on_prompt``).

        ``messages`` is a tuple of ``(role, content)``. Raises
        :class:`~gristmill.errors.DataError` for a conversation it cannot render (counted as
        ``chat-template`` under ``--on-error skip``).
        """
        ...


@runtime_checkable
class HasFingerprint(Protocol):
    """A tokenizer that can say when it changed (a directory trained again in place): its
    fingerprint takes part in deciding whether a dataset is already prepared."""

    def fingerprint(self) -> str:
        """A string that changes whenever its ids, special tokens or chat rendering could."""
        ...


@dataclass(frozen=True, kw_only=True)
class TokenizerType(Component):
    """A tokenizer family: claims a spec by exact name, prefix (``hf:``) or suffix.

    ``factory(spec, *, engine, **options)`` creates a tokenizer, with the user's declared
    ``tokenizer_options``; ``load(directory, config, *, engine)`` reloads the copy ``save`` wrote
    (prepare's workers encode with that copy), so whatever an option changes must be in the
    config ``save`` returns. Context gristmill passes both: ``engine`` (``"auto"`` or one of
    ``engines``, the encoding engines the family offers; an engine must give exactly the same
    ids); both ignore context they do not use (``**context``).
    """

    factory: Callable[..., Tokenizer]
    load: Callable[..., Tokenizer]
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()  # engine names besides "auto" that factory/load accept

    kind = "tokenizer"
    creates = "factory"


# --- shard formats -------------------------------------------------------------------------------


class ShardWriter(Protocol):
    """Writes one split's documents into shard files, each complete before it is visible."""

    def add(self, ids: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> None:
        """Append documents (token ids and, where the document has one, its loss mask)."""
        ...

    def close(self) -> list[dict[str, Any]]:
        """Flush the last shard; return one manifest entry per shard, in order.

        An entry holds ``num_documents``, ``num_tokens``, ``num_loss_tokens`` and, per file,
        ``{"path": "SPLIT/NAME", "bytes": N, "sha256": HEX}`` under keys of the format's choosing.
        """
        ...


class ShardReader(Protocol):
    """Serves one split's documents."""

    @property
    def num_documents(self) -> int: ...

    def lengths(self) -> np.ndarray:
        """Token count of every document (int64), read from the index only."""
        ...

    def document(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Token ids and loss mask (``None``: every token has loss) of one document."""
        ...


@runtime_checkable
class ReadsSpans(Protocol):
    """A shard reader that fetches many slices at once; without it a batch takes one
    ``document()`` call per slice."""

    def spans(
        self, docs: np.ndarray, starts: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The slices ``[starts[k], starts[k] + lengths[k])`` of documents ``docs[k]``,
        concatenated: tokens, and the loss mask (``None``: every token has loss)."""
        ...


class Problem(NamedTuple):
    """Something wrong in a dataset: where (a file, with an element index where one applies, or
    a manifest key) and what."""

    where: str
    message: str


@dataclass(frozen=True, kw_only=True)
class ShardFormatType(Component):
    """An on-disk format for tokenized documents: a writer, a matching reader, and optionally
    a deep check of the content."""

    # (directory, split, *, dtype, tokens_per_shard, prefix): every file the writer creates is
    # named PREFIX..., so the shards of parallel tasks never collide and a task's can be removed.
    writer: Callable[..., ShardWriter]
    reader: Callable[..., ShardReader]  # (directory, shards: list[dict], *, dtype)
    # (directory, shard: dict, *, dtype, vocab_size) -> Iterable[Problem]: what ``gristmill
    # verify`` checks inside one shard whose files are all there with their sizes and sums.
    verify: Callable[..., Iterable[Problem]] | None = None
    format_version: int = 1

    kind = "shard format"


# --- packers and samplers ------------------------------------------------------------------------


@dataclass(frozen=True)
class PackPlan:
    """Which document spans form each sample.

    Sample ``i`` is the segments ``sample_bounds[i]:sample_bounds[i+1]``; segment ``j`` is tokens
    ``[seg_start[j], seg_start[j] + seg_len[j])`` of document ``seg_doc[j]``. All int64.
    """

    sample_bounds: np.ndarray
    seg_doc: np.ndarray
    seg_start: np.ndarray
    seg_len: np.ndarray
    dropped: int = 0  # documents left out (longer than seq_len, with overlong="drop")

    def __len__(self) -> int:
        return len(self.sample_bounds) - 1


Segment = tuple[Any, int, int]  # (document, first token, token count) of one sample's segment


class OnlinePacker(Protocol):
    """Packs documents as they arrive (``gristmill.stream``), holding a bounded number open.

    A document is whatever the caller passes as an item (an index, or the tokens themselves);
    samples are lists of :data:`Segment` naming those items, so a closed sample is all the
    caller needs to assemble it.
    """

    dropped: int  # documents left out so far (overlong="drop")

    def push(self, items: Sequence[Any], lengths: np.ndarray) -> list[list[Segment]]:
        """Take the next documents (one item and one length each); return the samples this
        closes, in the order they close."""
        ...

    def flush(self) -> list[list[Segment]]:
        """The end of the stream: every sample still open."""
        ...


class Packer(Protocol):
    """Packs documents by length. ``plan`` is required; a packer that can work online is also
    :class:`PacksOnline` (without it, ``stream()`` refuses the packer)."""

    def plan(self, lengths: np.ndarray, seq_len: int | None) -> PackPlan:
        """Plan samples from document lengths alone (no token reads)."""
        ...


@runtime_checkable
class PacksOnline(Protocol):
    """A packer that packs documents as they arrive: what ``gristmill.stream()`` needs."""

    def online(self, seq_len: int | None) -> OnlinePacker:
        """A fresh online packer for samples of ``seq_len`` tokens (raises when ``seq_len``
        is missing and the packer needs one)."""
        ...


@dataclass(frozen=True, kw_only=True)
class PackerType(Component):
    """A packing strategy; ``factory(**options)`` returns a :class:`Packer`.

    Context gristmill passes: ``overlong`` (``"truncate"``, ``"truncate-left"``, ``"fragment"``
    or ``"drop"``: what happens to a document longer than ``seq_len``;
    :mod:`gristmill.plugin.overlong` implements them for any packer), which a packer ignores if it
    means nothing to it; besides, the user's declared ``packer_options``.
    """

    factory: Callable[..., Packer]
    cache: bool = True  # store plans beside the shards (False for plans cheaper than a read)
    # Whether samples restart positions and labels at every document unless the user says
    # otherwise (``restart=``); False for a token stream cut into windows, as nanoGPT's.
    restart: bool = True

    kind = "packer"
    creates = "factory"


class Sampler(Protocol):
    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of one epoch, in order: every index once (int64)."""
        ...


@dataclass(frozen=True, kw_only=True)
class SamplerType(Component):
    """An order over the samples of an epoch.

    ``factory(num_samples, *, seed, lengths, global_batch, shards, **context)`` returns a
    :class:`Sampler`; gristmill always passes ``seed``, ``lengths`` (int64 tokens per sample)
    and ``global_batch`` (samples per step over all ranks) for samplers that group by length,
    ``shards`` (int64, the shard of each sample's first token, or ``None`` where the shard
    format cannot say) for samplers that keep reads local, and the user's declared
    ``sampler_options``. A sampler only orders: :mod:`gristmill.serve.schedule`
    cuts the order into steps and ranks, the same way for every sampler.
    """

    factory: Callable[..., Sampler]

    kind = "sampler"
    creates = "factory"


# --- presets and executors -----------------------------------------------------------------------


PRESET_PREFIX = "preset:"


@dataclass(frozen=True, kw_only=True)
class PresetType(Component):
    """A named dataset: ``preset:NAME`` reads ``source`` with the preset's defaults.

    gristmill resolves presets itself, so ``source`` is any source spec (``hub:ORG/NAME``, a
    file, a glob, ``sample:stdlib``…) but another preset. The other fields are defaults that
    the user's own settings override, for the whole run, as if the user had given them:

    - ``tokenizer``: the tokenizer of a run that names none (``prepare``, ``stream``); ``None``
      leaves gristmill's default, ``byte``.
    - ``text_field``: the column holding the text: a run that gives no ``fields`` maps it as
      ``fields={"text": text_field}`` would (``text``, the canonical name, needs no mapping).
    - ``streaming``: ``False`` opens the source with the option ``streaming=False`` (download
      once, read from the local cache), which its source type must declare, as ``hub`` does.

    Presets in one run that disagree on a default need the user to give that setting.
    """

    source: str  # a source spec, e.g. "hub:HuggingFaceFW/fineweb-edu:sample-10BT"
    text_field: str = "text"
    tokenizer: str | None = None
    streaming: bool = True

    kind = "preset"

    def problems(self) -> list[str]:
        out = super().problems()
        if not isinstance(self.source, str) or not self.source.strip():
            out.append(f"preset {self.name!r} names no source")
        elif self.source.startswith(PRESET_PREFIX):
            out.append(f"preset {self.name!r} names another preset: name its source instead")
        if not isinstance(self.text_field, str) or not self.text_field:
            out.append(f"preset {self.name!r}: text_field names no column")
        if self.tokenizer is not None and (
            not isinstance(self.tokenizer, str) or not self.tokenizer
        ):
            out.append(f"preset {self.name!r}: tokenizer must be a spec or None")
        return out

    def source_options(self) -> dict[str, Any]:
        """The options its source is opened with, under the user's ``source_options``."""
        return {} if self.streaming else {"streaming": False}


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        """Run ``fn`` on every task; yield each result as it completes, in any order.

        ``fn`` and the tasks pickle, and every worker must see the output directory (a shared
        filesystem): a task writes its shards and record there itself. Raise the first error a
        task raises, and start no more tasks after it.
        """
        ...


@dataclass(frozen=True, kw_only=True)
class ExecutorType(Component):
    """Runs prepare tasks somewhere; ``factory(workers=N, **context)`` returns an
    :class:`Executor`, with the user's declared ``executor_options`` among the keywords."""

    factory: Callable[..., Executor]

    kind = "executor"
    creates = "factory"


# --- exporters -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExporterType(Component):
    """Writes a prepared dataset in another project's format, for trainers that read only that.

    ``export(dataset, directory, *, progress, **context)`` is called once per split with the
    split opened as a :class:`~gristmill.serve.dataset.Dataset` (packer ``none``: its ``documents``
    reader, ``manifest``, ``split`` and ``tokenizer``). It writes its files into ``directory``,
    a fresh directory that becomes the user's output only after every split is exported, and
    returns a JSON-able summary of what it wrote. ``progress``: show a progress bar. It raises
    :class:`~gristmill.errors.DatasetError` for a dataset the format cannot hold, saying why and
    what to do instead. The user's declared options (``export(..., options=)``, ``--option``)
    come as keywords too; it ignores context it does not use.
    """

    export: Callable[..., Mapping[str, Any]]

    kind = "exporter"
    creates = "export"


RECORD_TYPES: tuple[type[Component], ...] = (
    SourceType,
    FieldMapperType,
    TokenizerType,
    ShardFormatType,
    PackerType,
    SamplerType,
    PresetType,
    ExecutorType,
    ExporterType,
)
"""Every record type, in the order ``gristmill plugins`` lists them."""

KINDS: dict[str, tuple[str, type[Component]]] = {t.plural: (t.hook, t) for t in RECORD_TYPES}
"""Every component kind by its key (``"sources"``…): its registration hook and record type."""
