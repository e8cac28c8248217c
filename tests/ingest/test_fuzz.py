"""Fuzzing the readers and the field mappers: any input ends in records, rejections or a
gristmill error, never another exception, a hang or unbounded memory.

Hypothesis mixes structured JSON (deep nesting, numbers past Python's digit limit, NaN, lone
surrogates) with raw bytes (BOMs, CRLF, NUL, invalid UTF-8) and compressed streams (.gz/.zst, cut
short or damaged). ``GRISTMILL_FUZZ_EXAMPLES`` sets the examples per test, else the hypothesis
profile does (tests/conftest.py): few under ``dev`` and ``ci``, so that CI stays within seconds;
``tox -e fuzz`` runs the ``nightly`` profile, 20 times as many as ``ci``, and then the atheris
harness at the bottom of this file (``python tests/ingest/test_fuzz.py -runs=N``) when atheris is
installed.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import importlib.util
import io
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import tracemalloc
import types
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

import gristmill
import gristmill.plugin.files
from gristmill.errors import DataError, DatasetError, FieldError, GristmillError
from gristmill.ingest.mapping import check_fields, choose_mapper, mapped_examples
from gristmill.ingest.policy import ErrorPolicy
from gristmill.ingest.sources import open_sources
from gristmill.layout import INCOMPLETE, MANIFEST, reject_file
from gristmill.plugin.atomic import canonical_json
from gristmill.plugin.components import FieldMapperType, Rejected, Where
from gristmill.plugin.examples import ROLES, Example
from gristmill.plugin.manager import get_manager
from gristmill_fields import CHAT_ALIASES, COMPLETION_ALIASES, PROMPT_ALIASES, SYSTEM_ALIASES

HAS_ZSTD = importlib.util.find_spec("zstandard") is not None
COMPRESSIONS = ["", ".gz", ".zst"] if HAS_ZSTD else ["", ".gz"]

# tests.helpers.fuzz_examples, written out: this file also runs as a script (atheris), where the
# tests package is not importable.
EXAMPLES = int(os.environ.get("GRISTMILL_FUZZ_EXAMPLES") or settings.default.max_examples)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# A whole prepare run per example costs about 100 times a read: a tenth of the examples.
PREPARE = settings(FUZZ, max_examples=max(3, EXAMPLES // 10))

SOURCE_REASONS = {"malformed-json", "not-utf8", "too-large", "ragged-row", "malformed-csv"}
SECONDS = 30  # no single input may take longer to read: a hang, not a slow test


# --- strategies ------------------------------------------------------------------------------------

# Column names the field mappers look for, so that random records often almost fit a format.
KNOWN_KEYS = [
    "text",
    "input",
    "metadata",
    "role",
    "content",
    "from",
    "value",
    *PROMPT_ALIASES,
    *COMPLETION_ALIASES,
    *SYSTEM_ALIASES,
    *CHAT_ALIASES,
]
KEYS = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=6))
# Text with the awkward characters over-represented half the time: lone surrogates (from JSON
# "\ud800"), NUL, BOM, both line ends, quotes, delimiters, combining marks (NFC).
CHARS = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),
    st.sampled_from(list('\x00\ufeff\r\n\t ",\\\u0301\u00e9e\u2028')),
)
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12),
    st.text(CHARS, max_size=12),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),  # NaN and infinities included: Python's json writes and reads them
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=5),
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=16)
# Where a format wants text: mostly text, sometimes any value (a number, null, a list...).
FIELD = st.one_of(TEXT, TEXT, TEXT, VALUES)
SPEAKER = st.one_of(
    st.sampled_from(["system", "human", "user", "gpt", "assistant"]),
    st.sampled_from(["assistant", "gpt"]),
    st.sampled_from(["tool", "", "USER", "model"]),
    SCALARS,
)
TURN = st.one_of(
    st.fixed_dictionaries({"role": SPEAKER, "content": FIELD}),  # OpenAI
    st.fixed_dictionaries({"from": SPEAKER, "value": FIELD}),  # ShareGPT
    st.dictionaries(st.sampled_from(["role", "content", "from", "value"]), VALUES, max_size=3),
    VALUES,
)
METADATA = st.one_of(st.dictionaries(TEXT, SCALARS, max_size=3), VALUES)


@st.composite
def shaped(
    draw: st.DrawFn,
    required: dict[tuple[str, ...], st.SearchStrategy[Any]],
    optional: tuple[str, ...],
) -> dict[str, Any]:
    """A record with one alias of each required field (name → strategy), some optional fields
    (any value) and, sometimes, metadata or a stray column."""
    record = {draw(st.sampled_from(names)): draw(value) for names, value in required.items()}
    for name in optional:
        if draw(st.integers(0, 2)) == 0:
            record[name] = draw(st.one_of(FIELD, st.none()))
    if draw(st.booleans()):
        record["metadata"] = draw(METADATA)
    if draw(st.integers(0, 3)) == 0:
        record[draw(KEYS)] = draw(VALUES)
    return record


CLEAN = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12).filter(str.strip)


@st.composite
def conversation(draw: st.DrawFn) -> dict[str, Any]:
    """A valid chat record, OpenAI or ShareGPT style, ending with an assistant turn."""
    column = draw(st.sampled_from(CHAT_ALIASES))
    speaker, said, assistant = draw(
        st.sampled_from([("role", "content", "assistant"), ("from", "value", "gpt")])
    )
    roles = draw(st.lists(st.sampled_from(["system", "user", "human", "assistant", "gpt"])))
    turns = [{speaker: role, said: draw(CLEAN)} for role in [*roles, assistant]]
    record: dict[str, Any] = {column: turns}
    if draw(st.booleans()):
        record[draw(st.sampled_from(SYSTEM_ALIASES))] = draw(CLEAN)
    return record


# Valid records of each format; then records shaped like each format, with the breakage the
# fields allow (wrong types, empty text, unknown roles, no assistant turn); then any shape.
RECORDS = st.one_of(
    st.fixed_dictionaries({"text": CLEAN}, optional={"metadata": METADATA}),
    shaped({PROMPT_ALIASES: CLEAN, COMPLETION_ALIASES: CLEAN}, ()),
    conversation(),
    shaped({("text",): FIELD}, ()),
    shaped({PROMPT_ALIASES: FIELD, COMPLETION_ALIASES: FIELD}, ("input", *SYSTEM_ALIASES)),
    shaped({CHAT_ALIASES: st.one_of(st.lists(TURN, max_size=5), VALUES)}, SYSTEM_ALIASES),
    st.dictionaries(KEYS, VALUES, max_size=6),
)


def nested(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


# JSON text no Python value serialises to: nesting past the parser's recursion limit (and just
# under orjson's 1,024 levels), numbers past Python's 4,300-digit limit, literals cut short.
HAZARDS = st.one_of(
    st.builds(nested, st.sampled_from([1, 900, 1000, 1023, 1024, 1100, 5000]), st.just("1")),
    st.builds(
        lambda depth: '{"text": "x", "deep": ' + nested(depth, "0.5") + "}",
        st.sampled_from([10, 990, 1020, 3000]),
    ),
    st.integers(4290, 4400).map(lambda n: '{"text": "x", "n": ' + "9" * n + "}"),
    st.sampled_from(
        [
            '{"text": NaN}',
            '{"text": "a", "n": -Infinity}',
            '{"text": "\\ud800"}',
            '{"text": "\\udfff\\ud800", "metadata": {"\\udc00": "\\ud800"}}',
            '{"text": "ok", "n": 1e999}',
            '{"text": tru',
            '{"text": "ab\\u00',
            "[1e+",
            "{",
            "]",
            "",
            "null",
            '"just a string"',
        ]
    ),
)


def dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """One JSON document as text: a record written either way, or a hazard."""
    if draw(st.integers(0, 3)) == 0:
        return draw(HAZARDS)
    return dumps(draw(RECORDS), draw(st.booleans()))


def encode(text: str) -> bytes:
    # A lone surrogate written raw (ensure_ascii=False) becomes bytes that are not UTF-8.
    return text.encode("utf-8", "surrogatepass")


# Bytes that break decoders and line framing, spliced in at random places.
HAZARD_BYTES = st.sampled_from(
    [b"\x00", b"\xef\xbb\xbf", b"\r", b"\r\n", b"\n", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"']
)


@st.composite
def spliced(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with hazardous or random bytes inserted, and maybe cut short."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.one_of(HAZARD_BYTES, st.binary(max_size=8))) + data[at:]
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def jsonl_bytes(draw: st.DrawFn) -> bytes:
    lines = draw(
        st.lists(
            st.one_of(json_texts().map(encode), st.binary(max_size=20)), min_size=1, max_size=8
        )
    )
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + newline.join(lines)
    if draw(st.booleans()):
        data += newline
    return draw(spliced(data))


@st.composite
def json_bytes(draw: st.DrawFn) -> bytes:
    docs = draw(st.lists(json_texts(), min_size=1, max_size=6))
    space = draw(st.sampled_from(["", " ", "\n", "\r\n", "\t"]))
    if draw(st.booleans()):
        text = "[" + space + ("," + space).join(docs) + space + "]"
    else:
        text = space.join(docs)  # objects one after another, as JSON Lines saved as .json
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + encode(text)
    return draw(spliced(data))


@st.composite
def table_bytes(draw: st.DrawFn, delimiter: str) -> bytes:
    """A table: written by the csv module (properly quoted) or joined raw (quotes unbalanced)."""
    header = draw(
        st.one_of(  # mostly columns a field mapper reads, so that the rows reach it
            st.sampled_from([["text"], ["question", "answer"], ["instruction", "input", "output"]]),
            st.sampled_from([["prompt", "completion", "system"], ["text", "id"]]),
            st.lists(TEXT, min_size=1, max_size=4, unique=True),
        )
    )
    width = len(header)
    field = st.one_of(TEXT, TEXT, st.sampled_from(['"', '""', 'a"b', "\r", "x\ny", delimiter]))
    row = st.one_of(
        st.lists(field, min_size=width, max_size=width),
        st.lists(field, min_size=width, max_size=width),
        st.lists(field, min_size=width - 1, max_size=width + 1),  # ragged, or a blank line
    )
    rows = draw(st.lists(row, max_size=6))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    if draw(st.booleans()):
        out = io.StringIO()
        try:
            csv.writer(out, delimiter=delimiter, lineterminator=newline).writerows([header, *rows])
            text = out.getvalue()
        except csv.Error:  # Python 3.10's writer cannot write a NUL: join the fields raw instead
            text = newline.join(delimiter.join(row) for row in [header, *rows])
    else:
        text = newline.join(delimiter.join(row) for row in [header, *rows])
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + encode(text)
    return draw(spliced(data))


MAKE = {"data.jsonl": jsonl_bytes(), "data.json": json_bytes(), "data.csv": table_bytes(",")}
# max_record_bytes: mostly the default (None), so that records get through.
LIMITS = st.sampled_from([None, None, None, 4096, 64, 16, 1])


DAMAGE = ("none", "cut", "flip", "garbage")


@st.composite
def stored(draw: st.DrawFn, plain: bytes, damages: tuple[str, ...] = DAMAGE) -> tuple[str, bytes]:
    """``plain`` as stored on disk: as is, or compressed, maybe damaged or cut short."""
    compression = draw(st.sampled_from(COMPRESSIONS))
    if not compression:
        return "", plain
    if compression == ".gz":
        members = [gzip.compress(plain, mtime=0)]
        if draw(st.booleans()):  # concatenated members, as pigz and `cat a.gz b.gz` write them
            members.append(gzip.compress(draw(st.binary(max_size=20)), mtime=0))
    else:
        import zstandard

        members = [zstandard.ZstdCompressor().compress(plain)]
    data = b"".join(members)
    damage = draw(st.sampled_from(damages[:1] * len(damages) + damages[1:]))  # half undamaged
    if damage == "cut":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif damage == "garbage":
        data += draw(st.binary(min_size=1, max_size=16))
    return compression, data


# --- the property ------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no ``except Exception`` can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    if not hasattr(signal, "setitimer"):  # Windows: no alarm; the CI budget still catches a hang
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def content_size(path: Path) -> int:
    """Bytes in the file, decompressed (up to any damage)."""
    if not gristmill.plugin.files.is_compressed(str(path)):
        return path.stat().st_size
    size = 0
    with contextlib.suppress(GristmillError):
        for chunk in gristmill.plugin.files.chunks(str(path)):
            size += len(chunk)
    return size


def read_everything(
    path: Path, *, split: int = 1, **options: Any
) -> tuple[list[Any], GristmillError | None]:
    """Every item the sources of ``path`` yield (split in pieces), and the gristmill error that
    ended them, if any. Any other exception propagates: that is what the fuzzing looks for."""
    options = {k: v for k, v in options.items() if v is not None}
    items: list[Any] = []
    limit = 2 * content_size(path) + 10  # far more items than bytes: a loop, not a file
    with time_limit(SECONDS):
        try:
            for source in open_sources([str(path)], get_manager(), **options):
                for piece in source.split(split) if split > 1 else [source]:
                    for item in piece.records():
                        items.append(item)
                        assert len(items) <= limit, "the source yields without end"
        except GristmillError as exc:
            note(f"ended by {type(exc).__name__}")
            return items, exc
    for reason in sorted({item.reason for item in items if isinstance(item, Rejected)}):
        note(f"rejected: {reason}")
    note("records read" if any(not isinstance(i, Rejected) for i in items) else "no record")
    return items, None


def note(what: str) -> None:
    """Count an outcome: --hypothesis-show-statistics shows the mix the inputs reached."""
    if currently_in_test_context():  # not under atheris
        event(what)


def check(path: Path, items: list[Any], error: GristmillError | None, plain: bytes | None) -> None:
    """Records and rejections say where they come from, in order; an error names the file."""
    lines = [0]
    for item in items:
        if isinstance(item, Rejected):
            assert item.reason in SOURCE_REASONS, item
            assert isinstance(item.message, str) and item.message, item
            where = item.where
        else:
            record, where = item
            if path.name.endswith((".csv", ".tsv", ".csv.gz", ".csv.zst")):
                assert isinstance(record, dict) and all(isinstance(v, str) for v in record.values())
        assert isinstance(where, Where) and where.origin == str(path), item
        assert isinstance(where.line, int) and where.line >= lines[-1] and where.line >= 1, item
        if plain is not None:  # not compressed: the line must exist
            assert where.line <= plain.count(b"\n") + 1, item
        lines.append(where.line)
    if isinstance(error, DataError):
        assert str(path) in str(error), error


def fuzz_read(directory: Path, name: str, plain: bytes, stored_as: tuple[str, bytes], limit):
    compression, data = stored_as
    path = directory / (name + compression)
    path.write_bytes(data)
    items, error = read_everything(path, max_record_bytes=limit)
    check(path, items, error, None if compression else plain)
    return path, items, error


def comparable(items: list[Any]) -> list[str]:
    """Items as text that compares equal when equal (NaN != NaN as a float)."""
    out = []
    for item in items:
        if isinstance(item, Rejected):
            out.append(f"{item.reason} {item.where}")
        else:
            try:
                out.append(f"{json.dumps(item[0])} {item[1]}")
            except RecursionError:
                out.append(f"(deep) {item[1]}")
    return out


# --- the readers --------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), plain=st.one_of(jsonl_bytes(), st.binary(max_size=200)), limit=LIMITS)
def test_jsonl_reader_ends_in_records_rejections_or_a_gristmill_error(tmp_path, data, plain, limit):
    name = data.draw(st.sampled_from(["data.jsonl", "data.ndjson"]))
    path, items, error = fuzz_read(tmp_path, name, plain, data.draw(stored(plain)), limit)
    if error is None and path.suffix not in (".gz", ".zst"):
        # Cut into line-aligned pieces, the file yields the same items in the same order.
        pieces, _ = read_everything(
            path, split=data.draw(st.integers(2, 5)), max_record_bytes=limit
        )
        assert comparable(pieces) == comparable(items)


@FUZZ
@given(data=st.data(), plain=st.one_of(json_bytes(), st.binary(max_size=200)), limit=LIMITS)
def test_json_reader_ends_in_records_rejections_or_a_gristmill_error(tmp_path, data, plain, limit):
    fuzz_read(tmp_path, "data.json", plain, data.draw(stored(plain)), limit)


@FUZZ
@given(data=st.data(), delimiter=st.sampled_from([",", "\t"]), limit=LIMITS)
def test_csv_reader_ends_in_records_rejections_or_a_gristmill_error(
    tmp_path, data, delimiter, limit
):
    plain = data.draw(st.one_of(table_bytes(delimiter), st.binary(max_size=200)))
    name = "data.csv" if delimiter == "," else data.draw(st.sampled_from(["data.tsv", "data.tab"]))
    compression, stored_data = data.draw(stored(plain))
    path = tmp_path / (name + compression)
    path.write_bytes(stored_data)
    names = data.draw(
        st.one_of(st.none(), st.none(), st.lists(TEXT, min_size=1, max_size=3, unique=True))
    )
    items, error = read_everything(path, max_record_bytes=limit, column_names=names)
    check(path, items, error, None if compression else plain)
    if error is None and not compression:
        pieces, _ = read_everything(
            path, split=data.draw(st.integers(2, 5)), max_record_bytes=limit, column_names=names
        )
        assert comparable(pieces) == comparable(items)


@FUZZ
@given(
    data=st.data(),
    kind=st.sampled_from(["data.jsonl", "data.json", "data.csv"]),
    compression=st.sampled_from(COMPRESSIONS[1:]),
)
def test_compressed_files_read_as_the_plain_file_or_fail_after_a_prefix(
    tmp_path, data, kind, compression
):
    """A damaged or truncated archive yields a prefix of what the plain file yields, then an
    error naming the file: never records that are not in the file."""
    plain = data.draw(MAKE[kind])
    (tmp_path / "plain").mkdir(exist_ok=True)  # tmp_path is shared by the examples
    (tmp_path / "plain" / kind).write_bytes(plain)
    expected, expected_error = read_everything(tmp_path / "plain" / kind)
    compressed = gzip.compress(plain, mtime=0)
    if compression == ".zst":
        import zstandard

        compressed = zstandard.ZstdCompressor().compress(plain)
    cut = data.draw(st.integers(0, len(compressed)))
    path = tmp_path / (kind + compression)
    path.write_bytes(compressed[:cut])
    items, error = read_everything(path)
    check(path, items, error, None)
    same = [line.replace(str(path), "F") for line in comparable(items)]
    whole = [line.replace(str(tmp_path / "plain" / kind), "F") for line in comparable(expected)]
    if cut == len(compressed):
        assert same == whole and type(error) is type(expected_error)
    elif cut == 0:
        assert same == [] and error is None  # an empty file holds nothing
    elif error is None:  # it stopped before the cut (JSON ends at the first malformed value)
        assert same == whole
    else:
        assert isinstance(error, DataError) and same == whole[: len(same)]


@FUZZ
@given(records=st.lists(RECORDS, max_size=6), chunk=st.integers(1, 40), array=st.booleans())
def test_json_files_parse_as_the_standard_parser_reads_them_whatever_the_read_size(
    tmp_path, monkeypatch, records, chunk, array
):
    """Read sizes cut values anywhere (inside `true`, `1e+5`, `\\u00e9`): no value is lost."""
    monkeypatch.setattr(gristmill.plugin.files, "CHUNK", chunk)
    texts = [json.dumps(r, ensure_ascii=True) for r in records]
    path = tmp_path / "data.json"
    path.write_text(("[" + ",\n".join(texts) + "]") if array else "\n".join(texts))
    items = read_items(path)
    assert json.dumps(items) == json.dumps([json.loads(t) for t in texts])


@contextlib.contextmanager
def read_size(chunk: int) -> Iterator[None]:
    default = gristmill.plugin.files.CHUNK
    gristmill.plugin.files.CHUNK = chunk
    try:
        yield
    finally:
        gristmill.plugin.files.CHUNK = default


@FUZZ
@given(
    data=st.data(),
    kind=st.sampled_from(["data.jsonl", "data.json", "data.csv"]),
    chunk=st.integers(1, 40),
)
def test_every_reader_reads_the_same_whatever_the_read_size(tmp_path, data, kind, chunk):
    """Where reads end (and so where a bad byte or a cut value falls) changes nothing."""
    plain = data.draw(MAKE[kind])
    # A JSON value over the limit ends the file unless it was read whole in one read (documented).
    limit = None if kind == "data.json" else data.draw(LIMITS)
    # A flipped byte is found when the decompressor reaches it, which depends on the read size;
    # the output it decoded in that same call is lost with the error.
    compression, stored_data = data.draw(stored(plain, ("none", "cut", "garbage")))
    path = tmp_path / (kind + compression)
    path.write_bytes(stored_data)
    whole, error = read_everything(path, max_record_bytes=limit)
    with read_size(chunk):
        small, small_error = read_everything(path, max_record_bytes=limit)
    assert comparable(small) == comparable(whole) and str(small_error) == str(error)


# --- the field mappers ---------------------------------------------------------------------------------


def check_example(example: Example) -> None:
    for text in (example.text, example.prompt, example.completion, example.system):
        assert text is None or isinstance(text, str)
    if example.messages is not None:
        assert example.messages and all(
            role in ROLES and isinstance(content, str) for role, content in example.messages
        )
    for train_on_prompt in (False, True):
        text, spans = example.normalized().render(train_on_prompt=train_on_prompt)
        assert isinstance(text, str)
        assert all(0 <= a <= b <= len(text) for a, b in spans)
        assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))


@FUZZ
@given(
    record=RECORDS,
    fmt=st.sampled_from(["auto", "text", "prompt-completion", "chat"]),
    fields=st.one_of(
        st.just({}),
        st.just({}),
        st.dictionaries(
            st.sampled_from(["text", "prompt", "completion", "input", "system", "messages"]),
            st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=3)),
            max_size=3,
        ),
    ),
)
def test_field_mappers_give_an_example_or_a_field_error(record, fmt, fields):
    manager = get_manager()
    try:
        name = choose_mapper(record, fmt, fields, manager)
        mapper_type = manager.get(FieldMapperType, name)
        check_fields(mapper_type, fields)
    except DataError as exc:  # no format fits the keys, or --fields names what it does not read
        assert "--fields" in str(exc) or "--format" in str(exc)
        note("no format")
        return
    try:
        example = mapper_type.factory(fields)(record)
    except FieldError as exc:
        assert exc.reason in {
            "missing-field",
            "wrong-type",
            "empty-field",
            "bad-role",
            "no-assistant-turn",
        }
        assert isinstance(exc.field, str) and exc.field and str(exc)
        note(f"field error: {exc.reason}")
        return
    check_example(example)
    note(f"example: {name}")


class Listed:
    """A source that yields the given values as records, one per line."""

    spec = "fuzz.jsonl"

    def __init__(self, values: list[Any]):
        self.values = values

    def records(self) -> Iterator[tuple[Any, Where]]:
        for line, value in enumerate(self.values, 1):
            yield value, Where(self.spec, line)


def map_all(values: list[Any], rejects: Path, fmt: str = "auto") -> tuple[list, dict[str, int]]:
    """The examples of ``values`` under --on-error skip, and the reject counts (file written)."""
    policy = ErrorPolicy("skip", rejects)
    try:
        mapped = mapped_examples(Listed(values), fmt, {}, get_manager(), policy, lambda _: None)
        examples = list(mapped)
    finally:
        counts = policy.close()
    if counts:
        lines = rejects.read_bytes().decode("utf-8").split("\n")[:-1]  # not at U+2028 or U+0085
        assert len(lines) == sum(counts.values())
        assert all(json.loads(line)["where"].startswith("fuzz.jsonl:") for line in lines)
    return examples, counts


@FUZZ
@given(
    values=st.lists(st.one_of(RECORDS, VALUES), max_size=6),
    fmt=st.sampled_from(["auto", "text", "prompt-completion", "chat"]),
)
def test_every_mapped_record_is_an_example_or_a_counted_rejection(tmp_path, values, fmt):
    rejects = tmp_path / "rejects.jsonl"
    rejects.unlink(missing_ok=True)
    try:
        examples, counts = map_all(values, rejects, fmt)
    except DataError as exc:  # under auto, the first object fits no format
        assert fmt == "auto" and "cannot tell the format" in str(exc) and "fuzz.jsonl:" in str(exc)
        note("no format")
        return
    assert len(examples) + sum(counts.values()) == len(values)
    note(f"{len(examples)} example(s), {sum(counts.values())} rejection(s)")
    for example, _ in examples:
        check_example(example)
        if example.metadata is not None:  # it goes to the manifest as UTF-8 JSON
            canonical_json(dict(example.metadata))


# --- the whole pipeline ----------------------------------------------------------------------------------


@PREPARE
@given(
    data=st.data(),
    kind=st.sampled_from(["data.jsonl", "data.json", "data.csv"]),
    limit=st.sampled_from([None, 64, 4096]),
    on_error=st.sampled_from(["skip", "skip", "skip", "fail"]),
)
def test_prepare_counts_its_skips_or_fails_without_a_dataset_that_looks_complete(
    data, kind, limit, on_error
):
    plain = data.draw(MAKE[kind])
    if data.draw(st.booleans()):  # one good record first: a run that has something to write
        plain = (b"text\nvalid record\n" if kind == "data.csv" else b'{"text": "valid"}\n') + plain
    with tempfile.TemporaryDirectory() as tmp:
        compression, stored_data = data.draw(stored(plain))
        path = Path(tmp) / (kind + compression)
        path.write_bytes(stored_data)
        out = Path(tmp) / "out"
        options = {} if limit is None else {"max_record_bytes": limit}
        try:
            with time_limit(SECONDS):
                manifest = gristmill.prepare(
                    path, out, on_error=on_error, progress=False, workers=1, **options
                )
        except GristmillError as exc:
            note(f"{on_error}: failed with {type(exc).__name__}")
            # Nothing that open_dataset would serve: no manifest, or the unfinished-run marker.
            assert not (out / MANIFEST).exists() or (out / INCOMPLETE).exists()
            with pytest.raises(DatasetError):
                gristmill.open_dataset(out)
            if on_error == "fail":
                assert not reject_file(out).exists()
            return
        assert (out / MANIFEST).exists() and not (out / INCOMPLETE).exists()
        skipped = manifest["provenance"]["skipped"]
        rejects = reject_file(out)
        if skipped:
            lines = rejects.read_bytes().decode("utf-8").split("\n")[:-1]
            assert len(lines) == sum(skipped.values())
        else:
            assert not rejects.exists()
        documents = manifest["splits"]["train"]["num_documents"]
        assert documents >= 1 and len(gristmill.open_dataset(out)) == documents
        note(f"{on_error}: prepared" + (" with skips" if skipped else ""))


# --- regressions: what the fuzzing found ---------------------------------------------------------------


def read_items(path: Path, **options: Any) -> list[Any]:
    items, error = read_everything(path, **options)
    assert error is None, error
    return [item if isinstance(item, Rejected) else item[0] for item in items]


@pytest.mark.parametrize(
    "text",
    [
        nested(5000, "1"),  # past the standard parser's recursion limit (it raised RecursionError)
        '{"text": "x", "deep": ' + nested(1020, "1") + "}",  # orjson reads it; _has_float recursed
        '{"text": "x", "deep": ' + nested(1020, "0.5") + "}",
        '{"text": "x", "n": ' + "9" * 5000 + "}",  # past 4,300 digits: ValueError from int()
    ],
)
@pytest.mark.parametrize("name", ["data.jsonl", "data.json"])
def test_json_that_python_cannot_hold_is_rejected_not_raised(tmp_path, name, text):
    path = tmp_path / name
    ok = '{"text": "ok"}'
    path.write_text(f"{ok}\n{text}\n" + (ok if name.endswith(".jsonl") else ""))
    items = read_items(path)
    assert items[0] == {"text": "ok"}
    if not isinstance(items[1], Rejected):
        # Newer parsers hold deeper nesting (3.12 about 1,000 levels, 3.13 5,000): a value, then.
        assert sys.version_info >= (3, 12) and "[[" in text and items[1] == json.loads(text)
    else:
        assert isinstance(items[1], Rejected) and items[1].reason == "malformed-json"
        assert items[1].where.line == 2 and (
            "nested too deeply" in items[1].message or "more than 4,300 digits" in items[1].message
        )
    if name.endswith(".jsonl"):
        assert items[2:] == [{"text": "ok"}]  # the next line is read as usual


@pytest.mark.parametrize(
    "value",
    ["true", "false", "null", "-Infinity", "NaN", "1.5e+10", "-12345", '"\\u00e9\\ud83d\\ude00"'],
)
def test_a_value_cut_by_the_read_size_still_parses(tmp_path, monkeypatch, value):
    """A literal, number or escape cut at the end of one read once ended the file as
    malformed JSON (`tr` fails 2 characters before the end; only 1 was allowed for)."""
    text = "[" + ", ".join(f'{{"text": "t{i}", "v": {value}}}' for i in range(4)) + ", 12345]"
    path = tmp_path / "data.json"
    path.write_text(text)
    expected = json.loads(text)
    for chunk in range(1, 24):
        monkeypatch.setattr(gristmill.plugin.files, "CHUNK", chunk)
        items = read_items(path)
        assert json.dumps(items) == json.dumps(expected), chunk


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_a_json_file_keeps_the_values_before_a_bad_byte_whatever_the_read_size(tmp_path, chunk):
    """A byte that is not UTF-8 once failed the whole read it was in: with the usual 1 MiB
    reads, the values before it in that read were lost, unlike the same file read in pieces."""
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"text": "a"},\n {"text": "b"},\n {"text": "\xff"}]')
    with read_size(chunk):
        items, error = read_everything(path)
    assert [item[0] for item in items] == [{"text": "a"}, {"text": "b"}]
    assert isinstance(error, DataError) and "not UTF-8 at line 3 (invalid start byte)" in str(error)


def test_a_character_cut_at_the_end_of_a_json_file_is_reported(tmp_path):
    """The decoder was never told the file had ended: the cut bytes were dropped silently."""
    path = tmp_path / "data.json"
    path.write_bytes(b'[{"text": "a"}]\n\xe2\x82')
    items, error = read_everything(path)
    assert [item[0] for item in items] == [{"text": "a"}]
    assert isinstance(error, DataError) and "not UTF-8 at line 2" in str(error)


def huge_record(kind: str, size: int) -> bytes:
    """A file whose first record is ``size`` bytes long, then a small one."""
    body = b"a" * size
    if kind == "data.jsonl":
        return b'{"text": "' + body + b'"}\n{"text": "ok"}\n'
    if kind == "data.json":
        return b'[{"text": "' + body + b'"}, {"text": "ok"}]'
    return b'text\n"' + body + b'"\nok\n'


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("kind", ["data.jsonl", "data.json", "data.csv"])
def test_a_huge_record_is_rejected_in_bounded_memory(tmp_path, kind, compression):
    """64 MiB in one record, a limit of 1,000 bytes: the peak stays far below the record.

    Decompressing fed whole 1 MiB reads to the decompressor, whose output is held whole: a
    64 MiB line of one byte repeated is 64 KiB as gzip and 2 KiB as zstd, so it came out in one
    piece (a zstd bomb of 32 KiB holds 1 GiB).
    """
    size = 64 << 20
    plain = huge_record(kind, size)
    path = tmp_path / (kind + compression)
    if compression == ".gz":
        packer = zlib.compressobj(1, wbits=31)
        path.write_bytes(packer.compress(plain) + packer.flush())
    elif compression == ".zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor(level=1).compress(plain))
    else:
        path.write_bytes(plain)
    del plain
    tracemalloc.start()
    try:
        items = read_items(path, max_record_bytes=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(items[0], Rejected) and items[0].reason == "too-large"
    assert items[0].where.line == (2 if kind == "data.csv" else 1)
    if kind != "data.json":  # JSON cannot resume after a value it did not read
        assert items[1:] == [{"text": "ok"}]
    assert peak < 32 << 20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_a_damaged_archive_keeps_every_record_before_the_damage(tmp_path, compression):
    records = [{"text": f"record {i}"} for i in range(100)]
    plain = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    if compression == ".gz":
        good = gzip.compress(plain, mtime=0)
    else:
        import zstandard

        good = zstandard.ZstdCompressor().compress(plain)
    path = tmp_path / ("data.jsonl" + compression)
    path.write_bytes(good + b"\x00not a member\x00" * 4)
    items, error = read_everything(path)
    assert [item[0] for item in items] == records
    assert isinstance(error, DataError) and "trailing bytes after the end of the" in str(error)
    assert str(path) in str(error)


def test_rejected_records_with_lone_surrogates_or_deep_nesting_are_written(tmp_path):
    """The reject file is UTF-8: a record holding "\\ud800" once failed prepare with a
    UnicodeEncodeError, and one nested too deeply for json.dumps with a RecursionError."""
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    values = [{"text": "ok"}, {"text": 5, "note": "\ud800"}, {"text": None, "deep": deep}]
    examples, counts = map_all(values, tmp_path / "rejects.jsonl")
    assert len(examples) == 1 and counts == {"wrong-type:text": 2}
    first, second = (json.loads(line) for line in (tmp_path / "rejects.jsonl").open())
    assert json.loads(first["raw"]) == {"text": 5, "note": "\ud800"}
    # Python 3.13's json.dumps writes 5,000 levels; older ones cannot, and the entry says null.
    assert second["raw"] is None or json.loads(second["raw"]) == values[2]


def test_metadata_with_lone_surrogates_reaches_the_manifest(tmp_path, write_jsonl):
    src = write_jsonl(['{"text": "ok", "metadata": {"\\ud800": "\\udc00", "lang": "en"}}'])
    manifest = gristmill.prepare(src, tmp_path / "out", progress=False, workers=1)
    assert manifest["stats"]["metadata"] == {
        "\\ud800": {"\\udc00": {"documents": 1, "tokens": 3}},
        "lang": {"en": {"documents": 1, "tokens": 3}},
    }


def test_a_lone_surrogate_in_a_rejected_record_does_not_stop_prepare(tmp_path, write_jsonl):
    src = write_jsonl(['{"text": "ok"}', '{"text": 5, "note": "\\ud800"}'])
    out = tmp_path / "out"
    manifest = gristmill.prepare(src, out, on_error="skip", progress=False, workers=1)
    assert manifest["provenance"]["skipped"] == {"wrong-type:text": 1}
    [entry] = (json.loads(line) for line in reject_file(out).open(encoding="utf-8"))
    assert entry["where"].endswith("data.jsonl:2") and "\\ud800" in entry["raw"]


def test_column_names_must_name_a_column(tmp_path):
    """Zero columns once read every blank line as a record ({}), but only when the run it was
    in had no bad byte: splitting the file changed the records."""
    path = tmp_path / "data.csv"
    path.write_bytes(b"\n\xc2\x00\x80\n\n")
    with pytest.raises(DataError, match=r"data\.csv: column_names names no column"):
        open_sources([str(path)], get_manager(), column_names=[])


def test_fields_must_name_a_column(tmp_path, write_jsonl):
    """fields={"text": ""} (the Python API; the CLI refuses `--fields text=`) once failed every
    record with "field '': missing; name the column with --fields =COLUMN"."""
    src = write_jsonl([{"text": "ok"}])
    for fmt in ("auto", "text"):
        with pytest.raises(DataError, match="--fields text= names no column"):
            gristmill.prepare(src, tmp_path / fmt, format=fmt, fields={"text": ""}, progress=False)


# --- atheris: coverage-guided fuzzing of the same property --------------------------------------------


def _atheris_input(data: bytes, directory: Path) -> None:
    """One atheris input: its first byte chooses the reader, compression, size limit and whether
    to cut the compressed stream (where: the second byte); the rest is the file."""
    if len(data) < 2:
        return
    name = ["data.jsonl", "data.json", "data.csv", "data.tsv"][data[0] & 3]
    compression = ["", ".gz", ".zst", ""][data[0] >> 2 & 3]
    limit = [None, 16, 4096, 1][data[0] >> 4 & 3]
    body = data[2:]
    if compression == ".gz":
        body = gzip.compress(body, mtime=0)
    elif compression == ".zst":
        if not HAS_ZSTD:
            return
        import zstandard

        body = zstandard.ZstdCompressor().compress(body)
    if compression and data[0] & 0x80:
        body = body[: len(body) * data[1] // 256]
    path = directory / (name + compression)
    path.write_bytes(body)
    items, error = read_everything(path, max_record_bytes=limit)
    check(path, items, error, None)
    records = [item[0] for item in items if not isinstance(item, Rejected)]
    with contextlib.suppress(DataError):  # the first object may fit no format
        map_all(records, directory / "rejects.jsonl")


def atheris_main(argv: list[str]) -> int:
    try:
        import atheris
    except ImportError:
        print(
            "atheris is not installed (pip install atheris: Linux wheels for CPython 3.10-3.13); "
            "nothing to run"
        )
        return 0
    # One scratch directory, emptied at each start: libFuzzer exits without Python's clean-up.
    directory = Path(tempfile.gettempdir()) / "gristmill-atheris"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    # Load the plugins, then instrument gristmill's code only (instrument_all() would take a
    # minute and a half over numpy, hypothesis and pytest, and guide the fuzzer by their paths).
    for first in range(4):  # each reader once: every plugin module is loaded
        _atheris_input(bytes([first, 0]) + b'{"text": "x"}\n', directory)
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").startswith("gristmill"):
            atheris.instrument_func(obj)

    def one_input(data: bytes) -> None:
        _atheris_input(data, directory)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    return 0


def test_the_zstandard_inputs_run_where_zstandard_is_installed():
    """The .zst inputs join the tests above only where zstandard is installed: say so here,
    rather than leave them out unseen."""
    if not HAS_ZSTD:
        pytest.skip("zstandard is not installed: the .zst inputs are left out of this module")
    import zstandard

    assert (
        zstandard.ZstdDecompressor().decompress(zstandard.ZstdCompressor().compress(b"x")) == b"x"
    )


if __name__ == "__main__":
    sys.exit(atheris_main(sys.argv))
