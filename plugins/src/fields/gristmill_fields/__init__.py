"""Field mappers ``chat``, ``prompt-completion``, ``text`` and ``token-ids``: raw records to
canonical examples."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from gristmill import hookimpl
from gristmill.errors import FieldError
from gristmill.plugin.components import FieldMap, FieldMapperType
from gristmill.plugin.examples import Example
from gristmill_fields.token_ids import FIELDS as TOKEN_FIELDS
from gristmill_fields.token_ids import token_ids_mapper

# Column names tried in order when --fields does not name one.
PROMPT_ALIASES = ("instruction", "prompt", "question")
COMPLETION_ALIASES = ("response", "output", "answer", "completion")
SYSTEM_ALIASES = ("system", "system_prompt")


def _text(record: Mapping[str, Any], column: str, *, required: bool = True) -> str | None:
    value = record.get(column)
    if value is None and not required:  # an optional field may be absent or null
        return None
    if column not in record:
        raise FieldError(
            column, f"missing; name the column with --fields {column}=COLUMN", "missing-field"
        )
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise FieldError(column, f"expected text, got {kind}", "wrong-type")
    if required and not value.strip():
        raise FieldError(column, "empty", "empty-field")
    return value


def _column(
    record: Mapping[str, Any], fields: Mapping[str, str], name: str, aliases: tuple[str, ...]
) -> str:
    """The user's column for ``name``, else the first alias the record has; raise if none."""
    if name in fields:
        return fields[name]
    found = next((a for a in aliases if a in record), None)
    if found is None:
        raise FieldError(
            name,
            f"missing; looked for {', '.join(aliases)}; name the column with --fields {name}=COLUMN",
            "missing-field",
        )
    return found


def text_mapper(fields: Mapping[str, str]) -> FieldMap:
    column = fields.get("text", "text")

    def to_example(record: Mapping[str, Any]) -> Example:
        return Example(text=_text(record, column))

    return to_example


def prompt_completion_mapper(fields: Mapping[str, str]) -> FieldMap:
    def to_example(record: Mapping[str, Any]) -> Example:
        prompt = _text(record, _column(record, fields, "prompt", PROMPT_ALIASES))
        extra = _text(record, fields.get("input", "input"), required=False)
        if extra and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        completion = _text(record, _column(record, fields, "completion", COMPLETION_ALIASES))
        system = _text(record, _system_column(record, fields), required=False)
        return Example(prompt=prompt, completion=completion, system=system or None)

    return to_example


# ShareGPT speakers → canonical roles; OpenAI roles map to themselves.
SPEAKERS = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
CHAT_ALIASES = ("messages", "conversations")


def chat_mapper(fields: Mapping[str, str]) -> FieldMap:
    def to_example(record: Mapping[str, Any]) -> Example:
        column = _column(record, fields, "messages", CHAT_ALIASES)
        if column not in record:
            message = "missing; name the column with --fields messages=COLUMN"
            raise FieldError(column, message, "missing-field")
        turns = record[column]
        if not isinstance(turns, list) or not turns:
            kind = "null" if turns is None else type(turns).__name__
            problem = (
                "empty" if isinstance(turns, list) else f"expected a list of turns, got {kind}"
            )
            raise FieldError(
                column, problem, "empty-field" if isinstance(turns, list) else "wrong-type"
            )
        messages = [_turn(column, i, turn) for i, turn in enumerate(turns)]
        system = _text(record, _system_column(record, fields), required=False)
        if system and system.strip() and messages[0][0] != "system":
            messages.insert(0, ("system", system))
        if not any(role == "assistant" and content.strip() for role, content in messages):
            raise FieldError(
                column, "no assistant turn with text: nothing to train on", "no-assistant-turn"
            )
        return Example(messages=tuple(messages))

    return to_example


def _system_column(record: Mapping[str, Any], fields: Mapping[str, str]) -> str:
    return fields.get("system") or next(
        (a for a in SYSTEM_ALIASES if a in record), SYSTEM_ALIASES[0]
    )


def _turn(column: str, index: int, turn: Any) -> tuple[str, str]:
    """One turn as ``(role, content)``: OpenAI ``{role, content}`` or ShareGPT ``{from, value}``."""
    where = f"{column}[{index}]"
    if not isinstance(turn, Mapping):
        raise FieldError(
            where,
            f"expected an object with role and content, got {type(turn).__name__}",
            "wrong-type",
        )
    speaker_key, text_key = ("role", "content") if "role" in turn else ("from", "value")
    speaker = turn.get(speaker_key)
    role = SPEAKERS.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        known = ", ".join(SPEAKERS)
        raise FieldError(
            f"{where}.{speaker_key}", f"unknown role {speaker!r}; known: {known}", "bad-role"
        )
    content = turn.get(text_key)
    if not isinstance(content, str):
        kind = "null" if content is None else type(content).__name__
        raise FieldError(f"{where}.{text_key}", f"expected text, got {kind}", "wrong-type")
    return role, content


def _has_any(keys: Collection[str], names: tuple[str, ...]) -> bool:
    return any(name in keys for name in names)


@hookimpl
def gristmill_field_mappers() -> list[FieldMapperType]:
    return [
        FieldMapperType(
            name="token-ids",
            description="token ids already made (input_ids), stored as they are; loss from "
            "labels (-100: none) or loss_mask (0: none), else on every token",
            detect=lambda keys: "input_ids" in keys,
            factory=token_ids_mapper,
            fields=TOKEN_FIELDS,
            priority=40,
        ),
        FieldMapperType(
            name="chat",
            description="OpenAI messages (role/content) or ShareGPT conversations (from/value), "
            "optional system; loss on assistant turns",
            detect=lambda keys: _has_any(keys, CHAT_ALIASES),
            factory=chat_mapper,
            fields=("messages", "system"),
            priority=30,
        ),
        FieldMapperType(
            name="prompt-completion",
            description="prompt (instruction/question [+ input]) → completion (response/output/"
            "answer), optional system; loss on the completion",
            detect=lambda keys: (
                _has_any(keys, PROMPT_ALIASES) and _has_any(keys, COMPLETION_ALIASES)
            ),
            factory=prompt_completion_mapper,
            fields=("prompt", "completion", "input", "system"),
            priority=20,
        ),
        FieldMapperType(
            name="text",
            description="one plain text field (default 'text'); loss on every token",
            detect=lambda keys: "text" in keys,
            factory=text_mapper,
            fields=("text",),
            priority=10,
        ),
    ]
