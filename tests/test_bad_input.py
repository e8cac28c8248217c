"""Bad input stops prepare with the file, line and field, and exit status 2 on the CLI."""

from __future__ import annotations

import gristmill
import pytest
from gristmill.cli import main
from gristmill.errors import DataError, UnknownComponentError


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', '{"text": "a"'], r"data.jsonl:2: malformed JSON at column"),
        ([b'{"text": "caf\xe9"}'], r"data.jsonl:1: not UTF-8 \(byte 14 of the line\)"),
        (['{"text": "ok"}', '{"txt": "no"}'], r"data.jsonl:2: field 'text': missing"),
        (['{"text": "ok"}', '{"text": 42}'], r"data.jsonl:2: field 'text': expected text, got int"),
        (['{"text": null}'], r"data.jsonl:1: field 'text': expected text, got null"),
        (['{"text": "   "}'], r"data.jsonl:1: field 'text': empty"),
        (['{"text": "ok"}', "[1, 2]"], r"data.jsonl:2: expected an object, got list"),
        (['{"text": "\\ud800"}'], r"data.jsonl:1: cannot tokenize"),
        (
            ['{"prompt": "p", "completion": "c"}', '{"prompt": "p", "reply": "c"}'],
            r"data.jsonl:2: field 'completion': missing; looked for response, output, answer, "
            r"completion; name the column with --fields completion=COLUMN",
        ),
        (['{"question": "q", "answer": ""}'], r"data.jsonl:1: field 'answer': empty"),
        (
            ['{"title": "t"}'],
            r"data.jsonl:1: cannot tell the format of records with keys \['title'\]",
        ),
    ],
)
def test_bad_records_are_located(tmp_path, write_jsonl, lines, message):
    src = write_jsonl(lines)
    with pytest.raises(DataError, match=message):
        gristmill.prepare(src, tmp_path / "out", progress=False)


def test_empty_inputs(tmp_path, write_jsonl):
    with pytest.raises(DataError, match="hold no records"):
        gristmill.prepare(write_jsonl([]), tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="not found"):
        gristmill.prepare(tmp_path / "nope.jsonl", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="matches no files"):
        gristmill.prepare(str(tmp_path / "*.nothing"), tmp_path / "out", progress=False)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UnknownComponentError, match=r"no source reads .*notes.txt.*\.jsonl"):
        gristmill.prepare(tmp_path / "notes.txt", tmp_path / "out", progress=False)


def test_cli_reports_errors_without_a_traceback(tmp_path, write_jsonl, capsys):
    src = write_jsonl(['{"text": 1}'])
    assert main(["prepare", str(src), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "\ngristmill: error: " in err and "Traceback" not in err
    assert "data.jsonl:1: field 'text': expected text, got int" in err
    assert main(["prepare", str(src), "-o", str(tmp_path / "o2"), "--fields", "text"]) == 2
    assert "--fields expects NAME=COLUMN" in capsys.readouterr().err
    assert main(["prepare", str(src), "-o", str(tmp_path / "o3"), "--tokenizer", "gpt9"]) == 2
    assert "no tokenizer named 'gpt9'; available: byte" in capsys.readouterr().err


def test_fields_and_format_options(tmp_path, write_jsonl):
    src = write_jsonl([{"q": "What is 2+2?", "a": "4", "sys": "Be brief."}])
    out = tmp_path / "out"
    gristmill.prepare(
        src, out, fields={"prompt": "q", "completion": "a", "system": "sys"}, progress=False
    )
    ds = gristmill.open_dataset(out)
    ids, mask = ds.documents.document(0)
    assert ds.tokenizer.decode(ids) == "Be brief.\n\nWhat is 2+2?\n4<|endoftext|>"
    assert ds.tokenizer.decode(ids[mask.astype(bool)]) == "4<|endoftext|>"
    # Aliases: instruction + input → prompt, output → completion.
    src = write_jsonl([{"instruction": "Add", "input": "2 and 2", "output": "4"}], "alias.jsonl")
    gristmill.prepare(src, tmp_path / "alias", train_on_prompt=True, progress=False)
    ds = gristmill.open_dataset(tmp_path / "alias")
    ids, mask = ds.documents.document(0)
    assert ds.tokenizer.decode(ids) == "Add\n\n2 and 2\n4<|endoftext|>"
    assert mask is None  # every token carries loss: no mask is stored
    # Forcing a format reads prompt/completion records as text only if they have a text field.
    with pytest.raises(DataError, match="field 'text': missing"):
        gristmill.prepare(src, tmp_path / "forced", format="text", progress=False)


def test_null_optional_fields_and_unknown_field_names(tmp_path, write_jsonl):
    src = write_jsonl([{"instruction": "Say hi", "input": None, "system": None, "output": "hi"}])
    gristmill.prepare(src, tmp_path / "ok", progress=False)
    ds = gristmill.open_dataset(tmp_path / "ok")
    assert ds.tokenizer.decode(ds.documents.document(0)[0]) == "Say hi\nhi<|endoftext|>"
    with pytest.raises(DataError, match="--fields names question, but the prompt-completion"):
        gristmill.prepare(src, tmp_path / "bad", fields={"question": "prompt"}, progress=False)


def test_every_asked_for_split_exists_even_if_empty(tmp_path):
    upper = tmp_path / "ONE.JSONL"
    upper.write_text('{"text": "only one"}\n')
    gristmill.prepare(upper, tmp_path / "ds", val_fraction=0.001, progress=False)
    sizes = [len(gristmill.open_dataset(tmp_path / "ds", split=s)) for s in ("train", "val")]
    assert sorted(sizes) == [0, 1]  # the one record went to one split; the other is empty
