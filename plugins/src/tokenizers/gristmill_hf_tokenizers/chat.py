"""Loss spans for a conversation rendered by a tokenizer's own chat template.

A template is opaque (Jinja), so the spans come from what it renders, not from knowing its format:
for each assistant turn ``i``, the text before it is the rendering of ``messages[:i]`` with the
generation prompt (``<|im_start|>assistant\\n``, which the model is given at inference and so
carries no loss) and the text through it is the rendering of ``messages[:i + 1]``. The turn's
span is what the second adds to the first: its content plus whatever closes the turn
(``<|im_end|>``, ``</s>``), so the model learns to stop. (Before a conversation's first turn when
the assistant speaks first, the text before it is what two renderings of that turn alone, with
different contents, have in common.)

That only holds when the template renders every prefix of a conversation as a prefix of the whole
(most do). One that does not (it numbers turns, or rewrites earlier turns) is refused for that
conversation with a clear error rather than given a wrong mask.
"""

from __future__ import annotations

from collections.abc import Callable

from gristmill.errors import DataError

Conversation = list[dict[str, str]]
Render = Callable[[Conversation, bool], str]  # (messages, add_generation_prompt) -> text


def render_by_prefixes(
    render: Render, messages: tuple[tuple[str, str], ...], train_on_prompt: bool
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The whole conversation's text and the ``(start, end)`` spans of its assistant turns."""
    conversation = [{"role": role, "content": content} for role, content in messages]
    text = render(conversation, False)
    if train_on_prompt:
        return text, ((0, len(text)),)
    spans: list[tuple[int, int]] = []
    for i, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        before = _prompt_before(render, conversation, i)
        through = text if i == len(messages) - 1 else render(conversation[: i + 1], False)
        previous_end = spans[-1][1] if spans else 0
        if not (text.startswith(through) and through.startswith(before)) or (
            len(before) < previous_end
        ):
            raise DataError(
                f"the tokenizer's chat template does not render turn {i + 1} consistently: the "
                "conversation up to that turn is not rendered as a prefix of the whole "
                "conversation, so the assistant turns' loss spans cannot be found exactly. "
                "Use a template that renders conversations turn by turn (or prepare with "
                "--train-on-prompt)",
                field="messages",
            )
        spans.append((len(before), len(through)))
    return text, tuple(spans)


def _prompt_before(render: Render, conversation: Conversation, i: int) -> str:
    if i:
        return render(conversation[:i], True)
    # A conversation that opens with the assistant. transformers refuses to render an empty one,
    # so the text before the first turn's content is what two renderings of that turn with
    # different contents have in common.
    a, b = (render([{"role": "assistant", "content": c}], False) for c in ("A", "B"))
    return a[: next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))]
