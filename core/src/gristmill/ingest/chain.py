"""The ingest chain: a source's records → canonical examples → tokenized documents.

``prepare``'s tasks, ``stream`` and ``convert`` read their input through these functions alone
(``convert`` stops at the examples), so all three check, map, normalise and skip alike:

- :func:`check_schemas`, before any record is read, over every source of the run in order:
  sources of one kind that describe their columns must agree (:class:`SchemaCheck`);
- :func:`canonical_examples` reads one source, or a part of one (see :mod:`gristmill.ingest.plan`):
  its records mapped to :class:`Example` (:func:`mapped_examples`), in Unicode NFC when asked;
- :func:`document_batches` continues to token documents (:func:`encoded_batches`): rendering,
  encoding, loss masks, special tokens, truncation.

Every record that cannot be used, and every source the schema check refused, goes to the
caller's :class:`ErrorPolicy`, which raises (``fail``) or counts and sets it aside (``skip``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gristmill.errors import DataError
from gristmill.ingest.encoding import Batch, encoded_batches
from gristmill.ingest.mapping import mapped_examples
from gristmill.ingest.policy import ErrorPolicy
from gristmill.options import DocumentOptions, ReadingOptions
from gristmill.plugin.components import HasSchema, Rejected, Source, Tokenizer, Where
from gristmill.plugin.examples import Example
from gristmill.plugin.manager import PluginManager

Problem = Rejected | DataError  # why a source is not read


class SchemaCheck:
    """Sources of one kind that describe their columns (``schema()``) must all agree.

    A Parquet file whose column types differ from the first one's would otherwise fail, or worse
    pass, record by record; one clear message per file is better.
    """

    def __init__(self) -> None:
        self.first: dict[type, tuple[str, dict[str, str]]] = {}

    def problem(self, source: Source) -> Problem | None:
        """Why not to read ``source`` (its schema drifts, or cannot be read), or ``None``."""
        try:
            drift = self.drift(source)
        except DataError as exc:  # e.g. a Parquet footer that cannot be read
            return exc
        return Rejected("schema-drift", drift, Where(source.spec)) if drift else None

    def drift(self, source: Any) -> str | None:
        schema = source.schema() if isinstance(source, HasSchema) else None
        if schema is None:
            return None
        spec, reference = self.first.setdefault(type(source), (source.spec, schema))
        differences = [
            f"column {name!r} is {reference.get(name, 'absent')} there, "
            f"{schema.get(name, 'absent')} here"
            for name in sorted(set(reference) | set(schema))
            if reference.get(name) != schema.get(name)
        ]
        if not differences:
            return None
        return (
            f"the schema differs from {spec}'s: {'; '.join(differences)}; "
            "make the files agree, or prepare them separately"
        )


def check_schemas(sources: Sequence[Source], on_error: str) -> dict[int, Problem]:
    """The sources not to read, by position: their schema drifts from the first of their kind's,
    or cannot be read. Under ``on_error="fail"`` the first of them raises, before any record is
    read; under ``skip`` the readers hand each to their policy when they reach it."""
    schemas = SchemaCheck()
    refused: dict[int, Problem] = {}
    for position, source in enumerate(sources):
        problem = schemas.problem(source)
        if problem is None:
            continue
        if on_error == "fail":
            ErrorPolicy("fail", None).handle(problem)  # raises
        refused[position] = problem
    return refused


def canonical_examples(
    source: Source,
    options: ReadingOptions,
    manager: PluginManager,
    policy: ErrorPolicy,
    report: Callable[[str], None],
    refused: Problem | None = None,
) -> Iterator[tuple[Example, Where]]:
    """Every usable record of ``source`` as an :class:`Example`, with its location.

    ``refused``: why :func:`check_schemas` refused the source, which then goes to ``policy``
    unread. ``report`` hears the format chosen for the source.
    """
    if refused is not None:
        policy.handle(refused)
        return
    mapped = mapped_examples(
        source,
        options.format,
        options.fields,
        manager,
        policy,
        report,
        options.metadata_columns or (),
    )
    if not options.normalize:
        yield from mapped
        return
    for example, where in mapped:
        yield example.normalized(), where


def document_batches(
    source: Source,
    tok: Tokenizer,
    options: DocumentOptions,
    manager: PluginManager,
    policy: ErrorPolicy,
    report: Callable[[str], None],
    refused: Problem | None = None,
) -> Iterator[Batch]:
    """The documents of ``source``, tokenized, in batches: ids, loss masks (``None``: every
    token), metadata per document, and how many were truncated to ``max_doc_tokens``."""
    examples = canonical_examples(source, options, manager, policy, report, refused)
    return encoded_batches(
        examples,
        tok,
        policy,
        train_on_prompt=options.train_on_prompt,
        max_doc_tokens=options.max_doc_tokens,
    )
