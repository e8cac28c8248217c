"""The gristmill plugin API: one registration hook per kind of component.

Each hook returns a list of typed records from :mod:`gristmill.plugin.components`. All implementations are
called and their records merged; none of these hooks stops at the first result. The plugin
manager calls all of them together when it first needs its registry (the first component lookup,
or ``gristmill plugins``), and again after a plugin is registered or unregistered at run time, so
an implementation must return the same records every time and do no expensive work. Names must be
unique per kind across all installed plugins: a clash is reported naming both plugins. Hooks take
no arguments today; arguments, when added, are only ever appended and passed by keyword.

gristmill looks a component up by its record type and name (``manager.get(PackerType,
"first-fit")``). What a component may do beyond what its kind requires is a capability, a
runtime-checkable protocol in :mod:`gristmill.plugin.components` that gristmill tests with
``isinstance``: a plugin offers one by defining its method, and declares nothing else. Each
hook below lists the capabilities of its kind.

A plugin is a module (or object) with ``@hookimpl`` functions, published under the ``gristmill``
entry-point group::

    [project.entry-points.gristmill]
    lines = "gristmill_lines"
"""

from __future__ import annotations

import pluggy

from gristmill.plugin.components import (
    ExecutorType,
    ExporterType,
    FieldMapperType,
    PackerType,
    PresetType,
    SamplerType,
    ShardFormatType,
    SourceType,
    TokenizerType,
)

hookspec = pluggy.HookspecMarker("gristmill")
hookimpl = pluggy.HookimplMarker("gristmill")


@hookspec
def gristmill_sources() -> list[SourceType]:
    """Register sources: readers that turn a source spec into raw records.

    Called when the plugin manager builds its registry (see the module docs). Sources are used by
    ``gristmill prepare`` / :func:`gristmill.prepare` to resolve source specs.

    A source claims specs by prefix (``prefixes=("sample:",)``) or by file suffix
    (``suffixes=(".jsonl",)``); directories and globs are expanded to files first and each file goes
    to the source that claims its suffix (``.gz``/``.zst`` are stripped first, and
    :mod:`gristmill.plugin.files` reads them). ``factory(spec, **context)`` returns a
    :class:`~gristmill.plugin.components.Source`: ``records()`` yields ``(dict, Where)`` pairs in a
    deterministic order, or a ``Rejected`` in place of a bad record; ``split(n)`` cuts it into
    disjoint pieces; ``fingerprint()`` changes whenever the data does. Factories ignore the
    context they do not use (today: ``max_record_bytes``, ``column_names``). The user's
    ``source_options`` reach them only when the record declares them in ``options``; any other
    key is refused before the factory is called.

    Capabilities of a source: :class:`~gristmill.plugin.components.HasSchema` (``schema()``,
    its columns and their types: every file that one source type reads in a run must agree),
    :class:`~gristmill.plugin.components.HasSize` (``nbytes()``, the bytes a source that is
    not one local file reads: prepare cuts its input into tasks by size) and
    :class:`~gristmill.plugin.components.HasSplits` (``named_splits()``, the data's own splits,
    each as a source: ``prepare --keep-source-splits`` reads each into its split).
    ``preset:NAME`` is gristmill's own prefix (see :func:`gristmill_presets`).

    :return: a list of :class:`~gristmill.plugin.components.SourceType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_sources():
            return [SourceType(name="lines", description="One text record per line of a .txt file",
                               suffixes=(".txt",), factory=LinesSource)]  # LinesSource(spec, **context)
    """


@hookspec
def gristmill_field_mappers() -> list[FieldMapperType]:
    """Register field mappers: functions from a raw record to a canonical ``Example``.

    Called when the plugin manager builds its registry. Used by prepare to map records.
    With ``--format auto`` gristmill asks every mapper's ``detect(keys)`` about the first record of
    each source and uses the accepting mapper with the highest ``priority``, reporting the choice.
    ``factory(fields)`` gets the user's ``--fields`` mapping (canonical name → column) and returns
    the mapping function, which raises :class:`~gristmill.errors.FieldError` for a bad record.

    :return: a list of :class:`~gristmill.plugin.components.FieldMapperType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_field_mappers():
            return [FieldMapperType(name="title-body", description="title + body as plain text",
                                    detect=lambda keys: {"title", "body"} <= set(keys),
                                    factory=lambda fields: lambda r: Example(text=r["title"] + "\\n" + r["body"]))]
    """


@hookspec
def gristmill_tokenizers() -> list[TokenizerType]:
    """Register tokenizer families.

    Called when the plugin manager builds its registry. Used by prepare (``--tokenizer``) and
    whenever a dataset's stored tokenizer is loaded. A spec is claimed by exact ``name`` (``byte``), by prefix (``hf:``) or by
    suffix (``tokenizer.json``). ``factory(spec, *, engine, **options)`` loads a tokenizer for
    preparing data, with the user's ``tokenizer_options`` (only those the record declares in
    ``options``); ``load(directory, config, *, engine)`` loads the copy that ``Tokenizer.save``
    stored in a dataset, so reading a dataset never needs the original spec or options.

    Capabilities of a tokenizer: :class:`~gristmill.plugin.components.RendersChat`
    (``render_chat(messages, *, train_on_prompt)``, a chat template of its own, used for chat
    examples instead of gristmill's) and :class:`~gristmill.plugin.components.HasFingerprint`
    (``fingerprint()``, which changes whenever its ids, special tokens or chat rendering could).

    :return: a list of :class:`~gristmill.plugin.components.TokenizerType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_tokenizers():
            return [TokenizerType(name="tiktoken", description="OpenAI tiktoken encodings",
                                  prefixes=("tiktoken:",), factory=TiktokenTokenizer.from_spec,
                                  load=TiktokenTokenizer.load, requires="tiktoken")]
    """


@hookspec
def gristmill_shard_formats() -> list[ShardFormatType]:
    """Register on-disk formats for tokenized documents (a writer and its reader).

    Called when the plugin manager builds its registry. Used to write and to open datasets.
    The manifest names the format (``shard_format``) so :func:`gristmill.open_dataset` picks the
    matching reader. Writers must make every shard file complete before it becomes visible
    (temporary name, then rename); gristmill writes the manifest last.

    Capability of a reader: :class:`~gristmill.plugin.components.ReadsSpans`
    (``spans(docs, starts, lengths)``, many slices of documents in one call, for batches).

    :return: a list of :class:`~gristmill.plugin.components.ShardFormatType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_shard_formats():
            return [ShardFormatType(name="npz-shards", description="compressed numpy shards",
                                    writer=NpzWriter, reader=NpzReader)]
    """


@hookspec
def gristmill_packers() -> list[PackerType]:
    """Register packers: strategies that group documents into samples of at most ``seq_len``.

    Called when the plugin manager builds its registry. Used when a dataset is opened, a stream
    is read and ``inspect`` reports packing. ``factory(*, overlong, **options)`` (the user's
    ``packer_options``, only those the record declares in ``options``) returns an object whose
    ``plan(lengths, seq_len)`` computes a :class:`~gristmill.plugin.components.PackPlan` from document
    lengths alone.

    Capability of a packer: :class:`~gristmill.plugin.components.PacksOnline`
    (``online(seq_len)``, an :class:`~gristmill.plugin.components.OnlinePacker` that packs
    documents as they arrive; ``stream()`` needs it).

    :return: a list of :class:`~gristmill.plugin.components.PackerType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_packers():
            return [PackerType(name="one-per-sample", description="each document alone",
                               factory=OnePerSample)]
    """


@hookspec
def gristmill_samplers() -> list[SamplerType]:
    """Register samplers: orders over the samples of a dataset.

    Called when the plugin manager builds its registry. Used when samples are iterated (the
    torch data loader, ``Dataset.samples``). ``factory(num_samples, *, seed, lengths,
    global_batch, **options)`` (the user's ``sampler_options``, only those the record declares in
    ``options``) returns an object whose ``order(epoch)`` gives every sample index once, in that
    epoch's order; gristmill splits it into steps and ranks.

    :return: a list of :class:`~gristmill.plugin.components.SamplerType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_samplers():
            return [SamplerType(name="reverse", description="last sample first",
                                factory=Reverse, options={"stride": "samples skipped"})]
    """


@hookspec
def gristmill_presets() -> list[PresetType]:
    """Register presets: named datasets with their location and defaults.

    Called when the plugin manager builds its registry. gristmill resolves ``preset:NAME``
    itself: it opens the preset's ``source`` (any source spec but another preset) as if the
    user had named it, and a run that does not give its own tokenizer or ``fields`` takes the
    preset's (``tokenizer``; ``text_field``, when the text column is not ``text``).
    ``gristmill presets`` lists them; the ``hub`` plugin registers the first-party ones.

    :return: a list of :class:`~gristmill.plugin.components.PresetType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_presets():
            return [PresetType(name="tiny-stories", description="TinyStories, short English stories",
                               source="hub:roneneldan/TinyStories", tokenizer="byte")]
    """


@hookspec
def gristmill_executors() -> list[ExecutorType]:
    """Register executors: places where prepare's deterministic tasks run.

    Called when the plugin manager builds its registry; ``prepare --executor NAME`` picks one
    (first party: ``local``, this machine's processes, and ``ray``, a Ray cluster).
    ``factory(workers=N, **options)`` (the user's ``executor_options``, only those the record
    declares in ``options``) returns an object whose ``map(fn, tasks)`` runs the
    picklable ``fn`` on every task and yields each result as it completes. A task writes its own shards and record into the
    output directory, which every worker must therefore see; the output is byte-identical
    whatever runs the tasks, and in whatever order.

    :return: a list of :class:`~gristmill.plugin.components.ExecutorType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_executors():
            return [ExecutorType(name="threads", description="a thread pool",
                                 factory=ThreadExecutor)]
    """


@hookspec
def gristmill_exporters() -> list[ExporterType]:
    """Register exporters: writers of a prepared dataset in another project's format.

    Called when the plugin manager builds its registry; ``gristmill export DIR --to NAME -o OUT``
    and ``gristmill.export(DIR, OUT, to=NAME)`` pick one. gristmill calls
    ``export(dataset, directory, progress=..., **options)`` once per split (the user's
    ``options``, only those the record declares in ``options``), with the split opened as a
    :class:`~gristmill.serve.dataset.Dataset` and a fresh temporary ``directory`` that is renamed to
    ``OUT`` only when every split is written, so a failed export never leaves a whole-looking
    output. The summary each call returns goes into ``OUT/export.json`` with the dataset's
    fingerprint. No exporter ships with gristmill itself: ``contrib/gristmill-megatron`` writes
    Megatron-LM's ``.bin``/``.idx``.

    :return: a list of :class:`~gristmill.plugin.components.ExporterType` records.

    .. versionadded:: 0.1

    Example::

        @hookimpl
        def gristmill_exporters():
            return [ExporterType(name="npy", description="one .npy of token ids per split",
                                 export=export_npy)]
    """
