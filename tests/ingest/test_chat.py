"""The chat field mapper: OpenAI messages and ShareGPT conversations, loss on assistant turns."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.errors import DataError
from tests.helpers import examples


def decoded(out, index=0):
    ds = gristmill.open_dataset(out)
    ids, mask = ds.documents.document(index)
    tok = ds.tokenizer
    return tok.decode(ids), None if mask is None else tok.decode(ids[mask.astype(bool)])


def test_openai_messages_render_with_the_built_in_template(tmp_path, write_jsonl, caplog):
    record = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    }
    with caplog.at_level("INFO", logger="gristmill"):
        gristmill.prepare(write_jsonl([record]), tmp_path / "out", progress=False)
    assert "format chat (chosen from its keys)" in caplog.text
    text, trained = decoded(tmp_path / "out")
    assert text == (
        "<|system|>\nBe terse.\n<|user|>\n2+2?\n<|assistant|>\n4\n"
        "<|user|>\n3+3?\n<|assistant|>\n6\n<|endoftext|>"
    )
    assert trained == "4\n6\n<|endoftext|>"


def test_sharegpt_conversations_and_a_system_column(tmp_path, write_jsonl):
    record = {
        "system": "You are kind.",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello!"}],
    }
    gristmill.prepare(write_jsonl([record]), tmp_path / "out", progress=False)
    text, trained = decoded(tmp_path / "out")
    assert text == "<|system|>\nYou are kind.\n<|user|>\nhi\n<|assistant|>\nhello!\n<|endoftext|>"
    assert trained == "hello!\n<|endoftext|>"
    gristmill.prepare(
        write_jsonl([record], "b.jsonl"), tmp_path / "all", train_on_prompt=True, progress=False
    )
    assert decoded(tmp_path / "all")[1] is None  # every token carries loss: no mask stored


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], r"field 'messages': empty"),
        ("hi", r"field 'messages': expected a list of turns, got str"),
        ([{"role": "user", "content": "x"}], r"field 'messages': no assistant turn with text"),
        ([{"role": "robot", "content": "x"}], r"field 'messages\[0\].role': unknown role 'robot'"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}],
            r"field 'messages\[1\].content': expected text, got null",
        ),
        ([["user", "x"]], r"field 'messages\[0\]': expected an object with role and content"),
    ],
)
def test_bad_conversations_are_located(tmp_path, write_jsonl, messages, message):
    src = write_jsonl([{"messages": messages}])
    with pytest.raises(DataError, match=r"data.jsonl:1: " + message):
        gristmill.prepare(src, tmp_path / "out", progress=False)


TURN_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)


# Each example prepares a dataset: a third of the profile's examples.
@settings(max_examples=examples(0.3), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(
        st.tuples(st.sampled_from(["user", "assistant"]), TURN_TEXT), min_size=1, max_size=8
    ).filter(lambda ts: any(r == "assistant" and c.strip() for r, c in ts))
)
def test_loss_covers_exactly_the_assistant_turns(tmp_path_factory, write_jsonl, turns):
    root = tmp_path_factory.mktemp("chat")
    record = {"messages": [{"role": r, "content": c} for r, c in turns]}
    gristmill.prepare(
        write_jsonl([record], "c.jsonl"), root / "out", normalize=False, progress=False
    )
    text, trained = decoded(root / "out")
    assert text == "".join(f"<|{r}|>\n{c}\n" for r, c in turns) + "<|endoftext|>"
    expected = "".join(f"{c}\n" for r, c in turns if r == "assistant")
    assert trained == expected + ("<|endoftext|>" if turns[-1][0] == "assistant" else "")


def test_a_named_chat_column_that_is_missing_and_turn_reasons_counted_once(tmp_path, write_jsonl):
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    src = write_jsonl([{"dialog": turns}, {"other": 1}])
    with pytest.raises(DataError, match=r"data.jsonl:2: field 'dialog': missing"):
        gristmill.prepare(src, tmp_path / "a", format="chat", fields={"messages": "dialog"})
    bad_turns = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 1}]},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None},
            ]
        },
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}]},
    ]
    manifest = gristmill.prepare(
        write_jsonl(bad_turns, "turns.jsonl"), tmp_path / "b", on_error="skip", progress=False
    )
    assert manifest["provenance"]["skipped"] == {"wrong-type:messages[].content": 2}
