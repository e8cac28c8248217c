"""Tests of the installed plugin, with the fixtures of gristmill's pytest plugin."""

import gzip

import numpy as np
import pytest

import gristmill
from gristmill import hookimpl
from gristmill.errors import DataError
from gristmill.plugin.components import SamplerType, SourceType


def test_registers_lines_source(gristmill_manager):
    assert "lines" in gristmill_manager.components(SourceType)
    assert gristmill_manager.provider(SourceType, "lines").dist == "gristmill-example"
    assert not gristmill_manager.failures()
    assert not gristmill_manager.conflict_messages()


def test_prepare_with_plugin(tmp_path):
    src = tmp_path / "corpus.lines"
    src.write_text("first\n\nsecond\n", encoding="utf-8")
    manifest = gristmill.prepare(str(src), tmp_path / "ds")
    assert manifest["splits"]["train"]["num_documents"] == 2
    ds = gristmill.open_dataset(tmp_path / "ds")
    assert ds.tokenizer.decode(ds[1]["input_ids"]) == "second<|endoftext|>"


def test_pieces_hold_the_same_records_with_the_same_lines(gristmill_manager, tmp_path):
    src = tmp_path / "corpus.lines"
    src.write_text("".join(f"line {i}\n" if i % 3 else "\n" for i in range(100)), "utf-8")
    whole = gristmill_manager.get(SourceType, "lines").factory(str(src))
    expected = list(whole.records())
    for pieces in (1, 2, 7):
        parts = whole.split(pieces)
        assert 1 <= len(parts) <= pieces
        assert [r for part in parts for r in part.records()] == expected


def test_compressed_files_are_read_whole(gristmill_manager, tmp_path):
    src = tmp_path / "corpus.lines.gz"
    src.write_bytes(gzip.compress(b"one\ntwo\n"))
    source = gristmill_manager.get(SourceType, "lines").factory(str(src))
    assert source.split(4) == [source]
    assert [record for record, _ in source.records()] == [{"text": "one"}, {"text": "two"}]


def test_a_line_that_is_not_utf8_is_rejected_with_its_line_number(tmp_path):
    src = tmp_path / "corpus.lines"
    src.write_bytes(b"good\n\xff\xfe\nalso good\n")
    with pytest.raises(DataError, match=r"corpus\.lines:2: not UTF-8"):
        gristmill.prepare(str(src), tmp_path / "strict")
    manifest = gristmill.prepare(str(src), tmp_path / "lenient", on_error="skip")
    assert manifest["splits"]["train"]["num_documents"] == 2
    assert manifest["provenance"]["skipped"] == {"not-utf8": 1}


class Reverse:
    """A sampler defined in the test: last sample first, every epoch."""

    def __init__(self, num_samples, *, seed=0, **context):
        self.num_samples = num_samples

    def order(self, epoch):
        return np.arange(self.num_samples - 1, -1, -1, dtype=np.int64)


class ReversePlugin:
    @hookimpl
    def gristmill_samplers(self):
        return [SamplerType(name="reverse", description="last sample first", factory=Reverse)]


def test_reverse_sampler(gristmill_register, gristmill_manager, tmp_path):
    gristmill_register(ReversePlugin(), name="reverse-sampler")
    assert not gristmill_manager.failures()

    corpus = tmp_path / "corpus.lines"
    corpus.write_text("one\ntwo\nthree\n", encoding="utf-8")
    gristmill.prepare(str(corpus), tmp_path / "ds")
    ds = gristmill.open_dataset(tmp_path / "ds")
    first = next(ds.samples("reverse"))
    assert ds.tokenizer.decode(first["input_ids"]) == "three<|endoftext|>"
