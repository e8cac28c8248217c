"""Canonical training examples, and how they become one text with loss spans.

Field mappers turn raw records into :class:`Example`. Before tokenizing, an example is rendered to a
single string plus the character spans that carry loss; the tokenizer then marks a token as
trainable when it starts inside such a span. Computing the mask from offsets into the rendered text
(rather than tokenizing pieces separately) keeps it exact for any tokenizer.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from typing import overload

import numpy as np

PROMPT_SEPARATOR = "\n"
SYSTEM_SEPARATOR = "\n\n"


ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class Example:
    """One training example: plain ``text``; a ``prompt``/``completion`` pair (with ``system``);
    chat ``messages``, a tuple of ``(role, content)`` with roles from :data:`ROLES`; or token ids
    already made (``input_ids``, with a ``loss_mask`` of 0s and 1s, ``None`` when every token
    carries loss), stored as they are instead of rendered and tokenized."""

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    system: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    # The record's "metadata" object (nested objects flattened to "outer.inner" keys) and the
    # columns named by metadata_columns, as sorted (key, value) pairs of scalars (None: null):
    # stored per document and summarised in the manifest, never tokenized.
    metadata: tuple[tuple[str, str | int | float | bool | None], ...] | None = None
    input_ids: tuple[int, ...] | None = None
    loss_mask: tuple[int, ...] | None = None

    def as_record(self) -> dict[str, object]:
        """The canonical record: the fields that are set (chat turns as role/content objects)."""
        fields: dict[str, object] = {
            "text": self.text,
            "prompt": self.prompt,
            "completion": self.completion,
            "system": self.system,
        }
        if self.messages is not None:
            fields = {"messages": [{"role": r, "content": c} for r, c in self.messages]}
        if self.input_ids is not None:
            fields = {"input_ids": list(self.input_ids)}
            if self.loss_mask is not None:
                fields["loss_mask"] = list(self.loss_mask)
        if self.metadata is not None:
            fields["metadata"] = dict(self.metadata)
        return {k: v for k, v in fields.items() if v is not None}

    def normalized(self) -> Example:
        """The same example with every text in Unicode NFC (composed characters).

        Visually identical text then tokenizes identically ("é" as one code point, not "e" plus
        a combining accent). Code and data where the exact code points matter should turn it off.
        """
        if self.messages is not None:
            messages = tuple((role, _nfc(content)) for role, content in self.messages)
            return replace(self, messages=messages)
        return replace(
            self,
            text=_nfc(self.text),
            prompt=_nfc(self.prompt),
            completion=_nfc(self.completion),
            system=_nfc(self.system),
        )

    def render(self, *, train_on_prompt: bool = False) -> tuple[str, tuple[tuple[int, int], ...]]:
        """The text to tokenize and the ``(start, end)`` character spans that carry loss.

        Prompt/completion examples use the plain template ``{system}\n\n{prompt}\n{completion}``
        (the system part only when present); the completion alone carries loss unless
        ``train_on_prompt``. Chat examples use the built-in template: each turn is
        ``<|{role}|>\n{content}\n``, and each assistant turn's ``{content}\n`` carries loss.
        Tokenizers with a chat template of their own render differently. Token ids are not
        text: an example of ``input_ids`` has nothing to render.
        """
        if self.input_ids is not None:
            raise ValueError("an example of token ids is stored as it is, not rendered")
        if self.text is not None:
            return self.text, ((0, len(self.text)),)
        if self.messages is not None:
            return _render_chat(self.messages, train_on_prompt)
        head = f"{self.system}{SYSTEM_SEPARATOR}" if self.system else ""
        head += f"{self.prompt}{PROMPT_SEPARATOR}"
        text = head + (self.completion or "")
        return text, ((0 if train_on_prompt else len(head), len(text)),)


@overload
def _nfc(text: str) -> str: ...
@overload
def _nfc(text: None) -> None: ...
def _nfc(text: str | None) -> str | None:
    if text is None or unicodedata.is_normalized("NFC", text):  # the fast, common case
        return text
    return unicodedata.normalize("NFC", text)


def _render_chat(
    messages: tuple[tuple[str, str], ...], train_on_prompt: bool
) -> tuple[str, tuple[tuple[int, int], ...]]:
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    size = 0
    for role, content in messages:
        head = f"<|{role}|>\n"
        body = f"{content}\n"
        if role == "assistant":
            spans.append((size + len(head), size + len(head) + len(body)))
        parts += [head, body]
        size += len(head) + len(body)
    text = "".join(parts)
    return text, ((0, len(text)),) if train_on_prompt else tuple(spans)


def loss_mask(offsets: np.ndarray, spans: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Per token: 1 when the token starts inside one of the (sorted, disjoint) ``spans``."""
    starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    k = np.searchsorted(starts, offsets, side="right") - 1
    inside = k >= 0
    inside[inside] = offsets[inside] < ends[k[inside]]
    return inside.astype(np.uint8)
