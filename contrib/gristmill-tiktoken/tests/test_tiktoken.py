"""The tiktoken tokenizer, as installed from its wheel: offline, with a vocabulary learned here."""

from __future__ import annotations

import json
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry
from conftest import write_jsonl, write_ranks
from gristmill_tiktoken.ranks import TiktokenLoadError
from gristmill_tiktoken.tokenizer import GPT2_PATTERN, TiktokenTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill
from gristmill.cli import main
from gristmill.errors import GristmillError
from gristmill.plugin.components import TokenizerType

EOT = "<|endoftext|>"
# Text that exercises the boundaries: multi-byte characters the vocabulary splits, merges across
# characters, and text that looks like a special token.
TEXTS = [
    "The mill grinds the grist.",
    "Déjà vu: l'été à côté du café.",
    "日本語のテキスト 🙂🚀 and 中文",
    "a literal <|endoftext|> stays text",
    "  leading spaces, trailing\n\n",
    "é",
]
unicode_text = st.text(st.characters(codec="utf-8"), max_size=200)
hypothesis_settings = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def tok(spec: str) -> TiktokenTokenizer:
    return TiktokenTokenizer.from_spec(spec)


@pytest.fixture(scope="module")
def reference(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    """tiktoken itself, built directly from the same parts."""
    specials = {EOT: len(ranks)}
    return tiktoken.Encoding(
        "ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )


def starts_by_prefix(tokens: list[bytes]) -> list[int]:
    """Where each token starts: the number of whole characters in the bytes before it (so a token
    that begins inside a character starts in that character)."""
    out, before = [], b""
    for token in tokens:
        out.append(len(before.decode("utf-8", errors="ignore")))
        before += token
    return out


# --- registration -------------------------------------------------------------------------------


def test_registered_from_its_own_distribution(gristmill_manager):
    record = gristmill_manager.get(TokenizerType, "tiktoken")
    assert record.prefixes == ("tiktoken:",)
    assert gristmill_manager.provider(TokenizerType, "tiktoken").dist == "gristmill-tiktoken"
    assert not gristmill_manager.failures()
    assert not gristmill_manager.conflict_messages()


# --- encoding -----------------------------------------------------------------------------------


def test_defaults_for_a_ranks_file(tok, ranks):
    assert tok.vocab_size == len(ranks) + 1
    assert (tok.eos_id, tok.add_eos) == (len(ranks), True)
    assert (tok.bos_id, tok.add_bos, tok.pad_id) == (None, False, None)
    assert tok.decode([tok.eos_id]) == EOT


@hypothesis_settings
@given(text=unicode_text)
def test_round_trip_and_offsets(tok, reference, text):
    (ids,), (starts,) = tok.encode_batch([text], offsets=True)
    assert ids.tolist() == reference.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert len(ids) == 0 or 0 <= int(ids.min()) <= int(ids.max()) < tok.vocab_size
    tokens = reference.decode_tokens_bytes(ids.tolist())
    assert starts.tolist() == starts_by_prefix(tokens)


@hypothesis_settings
@given(texts=st.lists(unicode_text, max_size=8))
def test_a_batch_is_its_texts_one_by_one(tok, texts):
    ids, offsets = tok.encode_batch(texts)
    assert offsets is None
    assert len(ids) == len(texts)
    for text, doc in zip(texts, ids):
        (alone,), _ = tok.encode_batch([text])
        assert doc.tolist() == alone.tolist()


def test_tokens_split_multibyte_characters_and_start_inside_them(tok, reference):
    # The learned vocabulary has tokens that begin inside a character (their first byte continues
    # a character the token before began): such a token starts in that character.
    inside = []
    # "€" and "Ω" are not in the learning text: each of their bytes is a token of its own.
    for text in ("façade", "été", "日本語", "🙂🚀", "naïve", "5 € = Ω"):
        (ids,), (starts,) = tok.encode_batch([text], offsets=True)
        tokens = reference.decode_tokens_bytes(ids.tolist())
        assert starts.tolist() == starts_by_prefix(tokens)
        assert tok.decode(ids) == text
        inside += [token for token in tokens if token[0] & 0xC0 == 0x80]
    assert inside


def test_special_tokens_in_text_are_ordinary_text(tok):
    (ids,), _ = tok.encode_batch([f"before {EOT} after"])
    assert tok.eos_id not in ids.tolist()
    assert tok.decode(ids) == f"before {EOT} after"


def test_a_lone_surrogate_is_refused_not_replaced(tok):
    with pytest.raises(ValueError):
        tok.encode_batch(["fine", "broken \ud800 text"])


def test_a_record_with_a_lone_surrogate_is_skipped_alone(tmp_path, spec, gristmill_manager):
    src = tmp_path / "data.jsonl"
    src.write_text('{"text": "good"}\n{"text": "bad \\ud800"}\n{"text": "also good"}\n')
    manifest = gristmill.prepare(str(src), tmp_path / "ds", tokenizer=spec, on_error="skip")
    assert manifest["splits"]["train"]["num_documents"] == 2
    assert manifest["provenance"]["skipped"] == {"untokenizable": 1}


def test_an_unknown_id_decodes_to_a_marker(tok):
    assert tok.decode([ord("a"), tok.vocab_size + 5]) == f"a<|unknown:{tok.vocab_size + 5}|>"


def test_a_pattern_that_drops_characters_is_refused(ranks_file):
    tok = TiktokenTokenizer.from_spec(f"tiktoken:{ranks_file}", pattern=r"[a-z]+")
    with pytest.raises(ValueError, match="does not match every character"):
        tok.encode_batch(["two words"])


# --- options and settings files -----------------------------------------------------------------


def test_factory_options_override_and_unknown_ones_are_ignored(spec, ranks, caplog):
    tok = TiktokenTokenizer.from_spec(spec, eos=None, engine="auto", not_an_option=1)
    assert (tok.eos_id, tok.add_eos) == (None, False)
    assert "documents get no end marker" in caplog.text
    specials = {EOT: len(ranks), "<|bos|>": len(ranks) + 1, "<|pad|>": len(ranks) + 7}
    tok = TiktokenTokenizer.from_spec(spec, special_tokens=specials, bos="<|bos|>", pad="<|pad|>")
    assert (tok.bos_id, tok.add_bos, tok.eos_id) == (len(ranks) + 1, True, len(ranks))
    assert (tok.pad_id, tok.vocab_size) == (len(ranks) + 7, len(ranks) + 8)


def test_a_settings_file_sets_pattern_and_specials(tmp_path, ranks_file, ranks):
    n = len(ranks)
    settings_file = tmp_path / "vocab.json"
    settings_file.write_text(
        json.dumps(
            {
                "ranks": str(ranks_file),
                "pattern": r"\S+|\s+",
                "special_tokens": {"<|eot|>": n, "<|bos|>": n + 1},
                "eos": "<|eot|>",
                "bos": "<|bos|>",
            }
        )
    )
    tok = TiktokenTokenizer.from_spec(f"tiktoken:{settings_file}")
    assert (tok.eos_id, tok.bos_id, tok.add_bos, tok.vocab_size) == (n, n + 1, True, n + 2)
    words = tiktoken.Encoding("w", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    (ids,), _ = tok.encode_batch(["the grist, the mill"])
    assert ids.tolist() == words.encode_ordinary("the grist, the mill")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ranks": "small.tiktoken", "eos_token": "<|endoftext|>"}, "unknown settings eos_token"),
        ({"ranks": "small.tiktoken", "eos": "<|eot|>"}, "eos '<|eot|>' is not a special token"),
        ({"ranks": "small.tiktoken", "special_tokens": {"<|x|>": 3}}, "which a ranked token"),
        ({"ranks": "small.tiktoken", "pattern": "("}, "split pattern is not usable"),
        ({"ranks": "missing.tiktoken"}, "no such file: .*missing.tiktoken"),
        ({"pattern": r"\S+"}, '"ranks": the path of a ranks file'),
    ],
)
def test_a_bad_settings_file_says_what_is_wrong(tmp_path, ranks_file, settings, message):
    shutil.copyfile(ranks_file, tmp_path / "small.tiktoken")
    (tmp_path / "vocab.json").write_text(json.dumps(settings))
    with pytest.raises(TiktokenLoadError, match=message):
        TiktokenTokenizer.from_spec(f"tiktoken:{tmp_path / 'vocab.json'}")


# --- bad ranks files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"no such file: .*x\.tiktoken"),
        (b"YQ== 0\nnot base64! 1\n", r"x\.tiktoken:2: not a tiktoken ranks line"),
        (b"YQ== 0 extra\n", r"x\.tiktoken:1: not a tiktoken ranks line"),
        (b"YQ== 0\n", r"x\.tiktoken: 255 of the 256 byte values have no token"),
        (b"", r"x\.tiktoken: holds no tokens"),
    ],
)
def test_a_bad_ranks_file_names_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "x.tiktoken"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TiktokenLoadError, match=message):
        TiktokenTokenizer.from_spec(f"tiktoken:{path}")


def test_duplicate_ranks_are_refused(tmp_path, ranks):
    path = write_ranks(tmp_path / "dup.tiktoken", {**ranks, b"zz": 0})
    with pytest.raises(TiktokenLoadError, match="rank 0 is given to two tokens"):
        TiktokenTokenizer.from_spec(f"tiktoken:{path}")


def test_a_directory_is_not_a_ranks_file(tmp_path):
    (tmp_path / "dir.tiktoken").mkdir()
    with pytest.raises(TiktokenLoadError, match="is a directory"):
        TiktokenTokenizer.from_spec(f"tiktoken:{tmp_path / 'dir.tiktoken'}")


def test_prepare_with_a_missing_file_fails_before_writing(tmp_path, gristmill_manager):
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": "hello"}])
    missing = tmp_path / "nope.tiktoken"
    with pytest.raises(GristmillError, match=f"no such file: {missing}"):
        gristmill.prepare(str(src), tmp_path / "out", tokenizer=f"tiktoken:{missing}")
    assert not (tmp_path / "out").exists()


# --- through gristmill: prepare, open, reload ---------------------------------------------------


def test_prepared_documents_decode_to_their_texts(tmp_path, spec, tok, gristmill_manager):
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": t} for t in TEXTS])
    manifest = gristmill.prepare(str(src), tmp_path / "ds", tokenizer=spec)
    assert manifest["tokenizer"]["name"] == "tiktoken"
    assert manifest["tokenizer"]["eos_id"] == tok.eos_id
    ds = gristmill.open_dataset(tmp_path / "ds")
    assert ds.documents.num_documents == len(TEXTS)
    for i, text in enumerate(TEXTS):
        ids, mask = ds.documents.document(i)
        assert mask is None
        (expected,), _ = tok.encode_batch([text])
        assert ids.tolist() == [*expected.tolist(), tok.eos_id]
        assert ds.tokenizer.decode(ids) == text + EOT


def test_loss_masks_cover_exactly_the_completion(tmp_path, spec, tok, reference, gristmill_manager):
    records = [
        {"prompt": "Say it in French:", "completion": "l'été à côté"},
        {"prompt": "日本語", "completion": "のテキスト 🙂"},
        {"prompt": "ends inside a merge é", "completion": "été"},
        {"prompt": "p", "completion": f"text with {EOT} inside"},
    ]
    src = write_jsonl(tmp_path / "qa.jsonl", records)
    gristmill.prepare(str(src), tmp_path / "ds", tokenizer=spec)
    ds = gristmill.open_dataset(tmp_path / "ds")
    for i, record in enumerate(records):
        head = record["prompt"] + "\n"
        text = head + record["completion"]
        ids, mask = ds.documents.document(i)
        assert ids.tolist() == [*reference.encode_ordinary(text), tok.eos_id]
        starts = starts_by_prefix(reference.decode_tokens_bytes(ids[:-1].tolist()))
        expected = [int(start >= len(head)) for start in starts] + [1]  # the EOS carries loss
        assert mask.tolist() == expected
        loss_tokens = ids[:-1][mask[:-1].astype(bool)]
        assert record["completion"].endswith(ds.tokenizer.decode(loss_tokens))


def test_chat_examples_use_the_built_in_template(tmp_path, spec, gristmill_manager):
    messages = [
        {"role": "user", "content": "Bonjour ?"},
        {"role": "assistant", "content": "Ça va."},
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    manifest = gristmill.prepare(str(src), tmp_path / "ds", tokenizer=spec)
    assert manifest["tokenizer"]["chat_template"] == "built-in"
    ds = gristmill.open_dataset(tmp_path / "ds")
    ids, mask = ds.documents.document(0)
    assert ds.tokenizer.decode(ids) == f"<|user|>\nBonjour ?\n<|assistant|>\nÇa va.\n{EOT}"
    assert ds.tokenizer.decode(ids[mask.astype(bool)]) == f"Ça va.\n{EOT}"


def test_streaming_tokenizes_the_same_way(tmp_path, spec, tok, gristmill_manager):
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": t} for t in TEXTS])
    samples = list(gristmill.stream(str(src), tokenizer=spec, packer="none"))
    texts = [tok.decode(sample["input_ids"]) for sample in samples]
    assert sorted(texts) == sorted(text + EOT for text in TEXTS)


def test_a_tokenizer_pickles_for_worker_processes(tok):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.fingerprint() == tok.fingerprint()
    got, want = copy.encode_batch(TEXTS)[0], tok.encode_batch(TEXTS)[0]
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_the_saved_copy_reloads_offline_with_the_same_ids(tmp_path, ranks_file, gristmill_manager):
    own = shutil.copyfile(ranks_file, tmp_path / "own.tiktoken")
    original = TiktokenTokenizer.from_spec(f"tiktoken:{own}")
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": t} for t in TEXTS])
    gristmill.prepare(str(src), tmp_path / "ds", tokenizer=f"tiktoken:{own}")
    own.unlink()  # the dataset carries its own copy

    ds = gristmill.open_dataset(tmp_path / "ds")
    saved_spec = f"tiktoken:{tmp_path / 'ds' / 'tokenizer' / 'tiktoken.json'}"
    for copy in (ds.tokenizer, TiktokenTokenizer.from_spec(saved_spec)):
        assert copy.fingerprint() == original.fingerprint()
        assert (copy.vocab_size, copy.eos_id, copy.add_eos) == (
            original.vocab_size,
            original.eos_id,
            original.add_eos,
        )
        got, _ = copy.encode_batch(TEXTS)
        want, _ = original.encode_batch(TEXTS)
        assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_an_edited_saved_copy_is_refused(tmp_path, spec, gristmill_manager):
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": "hello"}])
    gristmill.prepare(str(src), tmp_path / "ds", tokenizer=spec)
    saved = tmp_path / "ds" / "tokenizer" / "ranks.tiktoken"
    saved.write_bytes(saved.read_bytes().replace(b" 300\n", b" 999\n"))
    # gristmill checks the saved files against the manifest's SHA-256 before the plugin loads them.
    with pytest.raises(GristmillError, match=r"ranks\.tiktoken: SHA-256 .* changed since prepare"):
        _ = gristmill.open_dataset(tmp_path / "ds").tokenizer


def test_the_fingerprint_follows_the_ranks_not_the_file(tmp_path, ranks):
    def fingerprint(path: Path, **options) -> str:
        return TiktokenTokenizer.from_spec(f"tiktoken:{path}", **options).fingerprint()

    base = fingerprint(write_ranks(tmp_path / "a.tiktoken", ranks))
    reordered = dict(reversed(list(ranks.items())))  # same ranks, other lines, other name
    assert fingerprint(write_ranks(tmp_path / "b.tiktoken", reordered)) == base
    fewer = dict(list(ranks.items())[:-1])  # the last merge left out
    assert fingerprint(write_ranks(tmp_path / "c.tiktoken", fewer)) != base
    assert fingerprint(tmp_path / "a.tiktoken", eos=None) != base
    assert fingerprint(tmp_path / "a.tiktoken", pattern=r"\S+|\s+") != base


def test_editing_the_ranks_file_makes_prepare_redo_the_dataset(tmp_path, ranks, gristmill_manager):
    path = write_ranks(tmp_path / "v.tiktoken", ranks)
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": t} for t in TEXTS])
    first = gristmill.prepare(str(src), tmp_path / "ds", tokenizer=f"tiktoken:{path}")
    again = gristmill.prepare(str(src), tmp_path / "ds", tokenizer=f"tiktoken:{path}")
    assert again["fingerprint"] == first["fingerprint"]
    write_ranks(path, dict(list(ranks.items())[:-1]))  # edited in place: one merge fewer
    with pytest.raises(GristmillError):
        gristmill.prepare(str(src), tmp_path / "ds", tokenizer=f"tiktoken:{path}")
    redone = gristmill.prepare(
        str(src), tmp_path / "ds", tokenizer=f"tiktoken:{path}", overwrite=True
    )
    assert redone["fingerprint"] != first["fingerprint"]


# --- named encodings ----------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No download can succeed, or even start: an empty tiktoken cache and no sockets."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "r50k_base", raising=False)


def test_a_named_encoding_offline_says_what_to_do(no_network, tmp_path, gristmill_manager):
    with pytest.raises(TiktokenLoadError) as failure:
        TiktokenTokenizer.from_spec("tiktoken:r50k_base")
    message = str(failure.value)
    assert "cannot download the r50k_base encoding" in message
    assert str(tmp_path / "empty-cache") in message
    assert "TIKTOKEN_CACHE_DIR=DIR" in message


def test_the_cli_reports_the_offline_error_in_one_line(no_network, tmp_path, capsys):
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": "hello"}])
    status = main(
        ["prepare", str(src), "-o", str(tmp_path / "out"), "--tokenizer", "tiktoken:r50k_base"]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "cannot download the r50k_base encoding" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_encoding_name_lists_the_known_ones():
    with pytest.raises(TiktokenLoadError, match=r"no encoding named 'o300k'.*cl100k_base"):
        TiktokenTokenizer.from_spec("tiktoken:o300k")


def test_a_named_encoding_is_saved_into_the_dataset(
    monkeypatch, tmp_path, ranks, gristmill_manager
):
    """A named encoding (here one registered the way tiktoken_ext plugins do) is written into the
    dataset, which then opens without the name being known."""
    parts = {
        "name": "gm_small",
        "pat_str": r"\S+|\s+",
        "mergeable_ranks": ranks,
        "special_tokens": {EOT: len(ranks) + 10, "<|fim|>": len(ranks)},
    }
    tiktoken.list_encoding_names()  # fills the registry's table of constructors
    monkeypatch.setitem(tiktoken.registry.ENCODING_CONSTRUCTORS, "gm_small", lambda: parts)
    tok = TiktokenTokenizer.from_spec("tiktoken:gm_small")
    assert (tok.eos_id, tok.vocab_size) == (len(ranks) + 10, len(ranks) + 11)
    src = write_jsonl(tmp_path / "data.jsonl", [{"text": t} for t in TEXTS])
    gristmill.prepare(str(src), tmp_path / "ds", tokenizer="tiktoken:gm_small")

    monkeypatch.delitem(tiktoken.registry.ENCODING_CONSTRUCTORS, "gm_small")
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gm_small")
    ds = gristmill.open_dataset(tmp_path / "ds")
    assert ds.tokenizer.fingerprint() == tok.fingerprint()
    reference = tiktoken.Encoding(**parts)
    for i, text in enumerate(TEXTS):
        ids, _ = ds.documents.document(i)
        assert ids.tolist() == [*reference.encode_ordinary(text), tok.eos_id]
    saved = json.loads((tmp_path / "ds" / "tokenizer" / "tiktoken.json").read_text())
    assert saved["name"] == "gm_small"
    assert saved["special_tokens"] == parts["special_tokens"]
