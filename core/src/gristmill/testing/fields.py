"""Field mappers: a record the mapper detects becomes one well-formed Example, the same through
``--fields`` with its columns renamed; a damaged record is a FieldError, never another error."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from gristmill.errors import FieldError
from gristmill.plugin.components import FieldMapperType
from gristmill.plugin.examples import ROLES, Example
from gristmill.testing.kit import Check, Context, given

# Records in the shapes the usual datasets have: plain text, prompt/completion (with the
# Alpaca names too), OpenAI-style and ShareGPT-style chats, token ids with Hugging Face labels.
SAMPLES: list[dict[str, Any]] = [
    {"text": "Plain text."},
    {"prompt": "What is 2 + 2?", "completion": "4"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ]
    },
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
    {"input_ids": [17, 4, 99, 3], "labels": [-100, -100, 99, 3]},
]
JUNK: tuple[Any, ...] = (None, 0, 1.5, True, "", [], {})


def checks(record: FieldMapperType) -> dict[str, Check]:
    return {"maps": check_maps, "bad-records": check_bad_records}


def _accepted(record: FieldMapperType, context: Context) -> list[dict[str, Any]]:
    """The kit's records the mapper detects, and the user's records for it."""
    mine = list(given(context.inputs.records.get(record.name, ()), f"mapper {record.name!r}"))
    found = [r for r in SAMPLES if record.detect(list(r))] + [dict(r) for r in mine]
    if not found:
        pytest.skip(
            f"field mapper {record.name!r} detects none of the kit's records: pass "
            f"records={{{record.name!r}: [...]}} to conformance()"
        )
    return found


def check_maps(record: FieldMapperType, context: Context) -> None:
    for raw in _accepted(record, context):
        example = record.factory({})(raw)
        _well_formed(example, raw)
        assert record.factory({})(raw) == example, f"{raw}: mapped twice, two examples"
        for name in record.fields:
            if name in raw:  # the same column under another name, named through --fields
                renamed = {(f"my_{k}" if k == name else k): v for k, v in raw.items()}
                again = record.factory({name: f"my_{name}"})(renamed)
                assert again == example, f"{raw}: --fields {name}=my_{name} maps it differently"


def _well_formed(example: Any, raw: Mapping[str, Any]) -> None:
    assert isinstance(example, Example), f"{raw}: mapped to {example!r}, not an Example"
    shapes = [
        example.text is not None,
        example.prompt is not None and example.completion is not None,
        example.messages is not None,
        example.input_ids is not None,
    ]
    assert sum(shapes) == 1, (
        f"{raw}: {example} is not one of text, prompt/completion, messages, input_ids"
    )
    if example.input_ids is not None:
        _well_formed_ids(example, raw)
        return
    for role, content in example.messages or ():
        assert role in ROLES and isinstance(content, str), f"{raw}: turn {(role, content)!r}"
    text, spans = example.render()
    assert isinstance(text, str)
    ends = [0, *(x for span in spans for x in span), len(text)]
    assert ends == sorted(ends), f"{raw}: loss spans {spans} not sorted, disjoint, in the text"


def _well_formed_ids(example: Example, raw: Mapping[str, Any]) -> None:
    ids, mask = example.input_ids, example.loss_mask
    assert isinstance(ids, tuple) and ids, f"{raw}: input_ids {ids!r} is not a tuple of ids"
    assert all(type(i) is int and i >= 0 for i in ids), f"{raw}: input_ids {ids!r}"
    if mask is not None:
        assert len(mask) == len(ids), f"{raw}: {len(mask)} loss_mask values for {len(ids)} ids"
        assert set(mask) <= {0, 1}, f"{raw}: loss_mask {mask!r} is not 0s and 1s"


def check_bad_records(record: FieldMapperType, context: Context) -> None:
    for raw in _accepted(record, context):
        mapper = record.factory({})
        for damaged in _damaged(raw):
            try:
                example = mapper(damaged)
            except FieldError:
                continue
            except Exception as exc:
                raise AssertionError(
                    f"{damaged}: raised {type(exc).__name__}: {exc}; a bad record must raise "
                    "gristmill.errors.FieldError, which the error policy counts"
                ) from exc
            _well_formed(example, damaged)


def _damaged(raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The record with a key missing, a value of the wrong type, a list item broken."""
    for key, value in raw.items():
        yield {k: v for k, v in raw.items() if k != key}
        for junk in JUNK:
            yield {**raw, key: junk}
        if isinstance(value, list):
            for i, item in enumerate(value):
                for junk in (None, "x", {}, [item]):
                    yield {**raw, key: [*value[:i], junk, *value[i + 1 :]]}
                if isinstance(item, dict):
                    for inner in item:
                        for junk in (None, 0, {"x": 1}):
                            broken = {**item, inner: junk}
                            yield {**raw, key: [*value[:i], broken, *value[i + 1 :]]}
