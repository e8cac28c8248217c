"""The index writer and the dtype rule, against the bytes and rules of megatron-core itself."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gristmill_megatron import indexed
from gristmill_megatron.indexed import index_size, token_dtype, write_index


@pytest.mark.parametrize(
    "vocab_size", [None, 1, 259, 32_000, 65_499, 65_500, 65_535, 65_536, 65_537, 2**31]
)
def test_the_dtype_is_megatrons_choice_for_the_vocabulary(megatron, vocab_size):
    ours = token_dtype(vocab_size)
    theirs = np.dtype(megatron.DType.optimal_dtype(vocab_size))
    assert ours == theirs and ours.byteorder in "<="
    assert indexed.dtype_code(ours) == megatron.DType.code_from_dtype(theirs.type)


def test_the_header_and_arrays_are_laid_out_as_documented(tmp_path):
    offsets = np.array([0, 3, 3, 10], np.int64)  # the middle sequence is empty
    path = tmp_path / "x.idx"
    size = write_index(path, offsets, np.dtype("<i4"))
    data = path.read_bytes()
    assert size == len(data) == index_size(3)
    assert data[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<QBQQ", data, 9) == (1, 4, 3, 4)
    body = 9 + 8 + 1 + 8 + 8
    assert np.frombuffer(data, "<i4", 3, body).tolist() == [3, 0, 7]
    assert np.frombuffer(data, "<i8", 3, body + 12).tolist() == [0, 12, 12]  # bytes, int32
    assert np.frombuffer(data, "<i8", 4, body + 36).tolist() == [0, 1, 2, 3]


def test_the_index_is_written_in_chunks(tmp_path, monkeypatch):
    lengths = np.random.default_rng(0).integers(1, 50, 1000)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    write_index(tmp_path / "whole.idx", offsets, np.dtype("<u2"))
    monkeypatch.setattr(indexed, "INDEX_CHUNK", 7)  # 1000 is not a multiple: a short last chunk
    write_index(tmp_path / "chunked.idx", offsets, np.dtype("<u2"))
    assert (tmp_path / "whole.idx").read_bytes() == (tmp_path / "chunked.idx").read_bytes()


def test_megatron_reads_the_index(tmp_path, megatron):
    lengths = np.array([5, 1, 9, 2])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.arange(offsets[-1], dtype="<u2")
    tokens.tofile(tmp_path / "x.bin")
    write_index(tmp_path / "x.idx", offsets, np.dtype("<u2"))
    ds = megatron.IndexedDataset(str(tmp_path / "x"))
    assert ds.sequence_lengths.tolist() == lengths.tolist()
    assert ds.document_indices.tolist() == [0, 1, 2, 3, 4]
    for i in range(len(lengths)):
        assert ds[i].tolist() == tokens[offsets[i] : offsets[i + 1]].tolist()
