"""The conformance kit of gristmill.testing finds what it claims to: each kind's checks fail on a
component that breaks that kind's contract, a component the kit cannot exercise is reported as
skipped with its reason, and the one-liner a plugin author writes runs as a pytest test."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from gristmill import hookimpl
from gristmill.plugin.components import (
    ExecutorType,
    ExporterType,
    FieldMapperType,
    PackerType,
    PackPlan,
    SamplerType,
    ShardFormatType,
    SourceType,
    TokenizerType,
)
from gristmill.plugin.examples import Example
from gristmill.plugin.manager import PluginManager
from gristmill.testing import Unavailable
from gristmill.testing.kit import Context, Inputs, cases
from gristmill_byte import ByteTokenizer
from gristmill_jsonl.jsonl_source import JsonlSource
from gristmill_memmap_shards.reader import MemmapShardReader
from gristmill_memmap_shards.writer import MemmapShardWriter
from gristmill_none_packer import NonePacker
from gristmill_random_sampler import Shuffled


class Plugin:
    """A plugin of one record, registered under the name "broken"."""

    def __init__(self, record: Any):
        self.record = record

    @hookimpl
    def gristmill_sources(self):
        return [self.record] if isinstance(self.record, SourceType) else []

    @hookimpl
    def gristmill_field_mappers(self):
        return [self.record] if isinstance(self.record, FieldMapperType) else []

    @hookimpl
    def gristmill_tokenizers(self):
        return [self.record] if isinstance(self.record, TokenizerType) else []

    @hookimpl
    def gristmill_shard_formats(self):
        return [self.record] if isinstance(self.record, ShardFormatType) else []

    @hookimpl
    def gristmill_packers(self):
        return [self.record] if isinstance(self.record, PackerType) else []

    @hookimpl
    def gristmill_samplers(self):
        return [self.record] if isinstance(self.record, SamplerType) else []

    @hookimpl
    def gristmill_exporters(self):
        return [self.record] if isinstance(self.record, ExporterType) else []

    @hookimpl
    def gristmill_executors(self):
        return [self.record] if isinstance(self.record, ExecutorType) else []


def run(record: Any, check: str, tmp_path_factory, **inputs: Any) -> None:
    """Run the kit's check ``check`` on ``record``, registered alone in a plugin."""
    manager = PluginManager()
    manager.register(Plugin(record), "broken")
    [case] = [c for c in cases(manager, ["broken"]) if c.check == check]
    tmp_path = tmp_path_factory.mktemp("kit")
    case(Context(manager, Inputs(**inputs), tmp_path, tmp_path_factory))


# --- broken components, one contract broken each ---------------------------------------------


class DuplicatingSource(JsonlSource):
    def split(self, pieces):
        return [self] * pieces  # every piece is the whole


class ConstantFingerprint(JsonlSource):
    def fingerprint(self):
        return "always the same"


class IdsPastVocabulary(ByteTokenizer):
    def encode_batch(self, texts, *, offsets=False):
        ids, starts = super().encode_batch(texts, offsets=offsets)
        return [a + 200 for a in ids], starts


class BatchDependent(ByteTokenizer):
    def encode_batch(self, texts, *, offsets=False):
        ids, starts = super().encode_batch(texts, offsets=offsets)
        return [a + (len(texts) > 1) for a in ids], starts  # ids shift when texts come together


class Forgetful(ByteTokenizer):
    def save(self, directory):
        super().save(directory)
        return {"add_bos": False, "add_eos": False}  # add_eos is lost on reload


class MasklessReader(MemmapShardReader):
    def document(self, index):
        return super().document(index)[0], None  # every token has loss, whatever was written


class LeftoverWriter(MemmapShardWriter):
    def close(self):
        (self.split_dir / "scratch.tmp").write_bytes(b"left behind")
        return super().close()


class TwicePacker(NonePacker):
    def plan(self, lengths, seq_len):
        plan = super().plan(lengths, seq_len)
        n = len(plan.seg_doc)
        return PackPlan(
            np.arange(2 * n + 1, dtype=np.int64),
            np.tile(plan.seg_doc, 2),
            np.tile(plan.seg_start, 2),
            np.tile(plan.seg_len, 2),
            plan.dropped,
        )


class UnlimitedPacker(NonePacker):
    def plan(self, lengths, seq_len):
        return super().plan(lengths, None)  # documents over seq_len kept whole


class LosesOne(Shuffled):
    def order(self, epoch):
        return super().order(epoch)[1:]


class Unseeded(Shuffled):
    def order(self, epoch):
        return np.random.default_rng().permutation(self.num_samples).astype(np.int64)


def export_random(dataset, directory, **context):
    (directory / f"{dataset.split}.bin").write_bytes(os.urandom(8))  # differs every time
    return {"documents": dataset.documents.num_documents}


class DropsLast:
    def __init__(self, workers=1, **context):
        pass

    def map(self, fn, tasks):
        return (fn(task) for task in tasks[:-1])


def keyerror_mapper(fields):
    return lambda record: Example(text=record["text"])  # a missing key: KeyError


def _source(factory, **fields):
    return SourceType(name="x", description="x", suffixes=(".jsonl",), factory=factory, **fields)


def _tokenizer(cls):
    return TokenizerType(name="x", description="x", factory=cls.from_spec, load=cls.load)


def _shards(writer=MemmapShardWriter, reader=MemmapShardReader):
    return ShardFormatType(name="x", description="x", writer=writer, reader=reader)


def _packer(cls):
    return PackerType(name="x", description="x", factory=cls)


def _sampler(cls):
    return SamplerType(name="x", description="x", factory=cls)


BROKEN = {
    "source split into copies": (_source(DuplicatingSource), "split", "not the whole"),
    "source fingerprint ignores data": (
        _source(ConstantFingerprint),
        "fingerprint",
        "ignores a changed record",
    ),
    "mapper raising KeyError": (
        FieldMapperType(
            name="x", description="x", factory=keyerror_mapper, detect=lambda k: "text" in k
        ),
        "bad-records",
        "raised KeyError",
    ),
    "ids past vocab_size": (_tokenizer(IdsPastVocabulary), "encode", "past vocab_size"),
    "ids that depend on the batch": (_tokenizer(BatchDependent), "batch", "depend on the batch"),
    "a reload that differs": (_tokenizer(Forgetful), "save-load", "add_eos changed"),
    "masks lost": (_shards(reader=MasklessReader), "round-trip", "mask of"),
    "a file no entry names": (_shards(writer=LeftoverWriter), "files", "scratch.tmp"),
    "documents placed twice": (_packer(TwicePacker), "plan", "placed twice"),
    "samples past seq_len": (_packer(UnlimitedPacker), "plan", "more than seq_len"),
    "a sample left out": (_sampler(LosesOne), "order", "not every sample once"),
    "ranks that disagree": (_sampler(Unseeded), "ranks", "ranks disagree"),
    "exports that differ": (
        ExporterType(name="x", description="x", export=export_random),
        "export",
        "two exports of one dataset differ",
    ),
    "a task's result lost": (
        ExecutorType(name="x", description="x", factory=DropsLast),
        "map",
        "1 workers",
    ),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_contract_fails_its_check(broken, tmp_path_factory):
    record, check, message = BROKEN[broken]
    with pytest.raises(AssertionError, match=message):
        run(record, check, tmp_path_factory)


def test_the_same_components_unbroken_pass(tmp_path_factory):
    for record, check in (
        (_source(JsonlSource), "split"),
        (_source(JsonlSource), "fingerprint"),
        (_tokenizer(ByteTokenizer), "save-load"),
        (_shards(), "files"),
        (_packer(NonePacker), "plan"),
        (_sampler(Shuffled), "ranks"),
    ):
        run(record, check, tmp_path_factory)


# --- what the kit cannot exercise is reported --------------------------------------------------


def test_an_input_given_as_unavailable_is_a_skip_with_its_reason(tmp_path_factory):
    with pytest.raises(pytest.skip.Exception, match=r"source 'x': needs a licence"):
        run(
            _source(JsonlSource),
            "records",
            tmp_path_factory,
            sources={"x": Unavailable("needs a licence")},
        )


def test_a_source_the_kit_cannot_write_for_says_what_to_pass(tmp_path_factory):
    record = SourceType(name="x", description="x", prefixes=("x:",), factory=JsonlSource)
    with pytest.raises(pytest.skip.Exception, match=r"claims x:.*pass sources=\{'x': write\}"):
        run(record, "records", tmp_path_factory)


def needs_a_library(spec, **context):
    import gristmill_no_such_library  # noqa: F401

    raise AssertionError("unreachable")


@pytest.mark.parametrize("requires", ["extra", None])
def test_a_missing_library_is_a_skip_only_where_the_record_names_its_extra(
    requires, tmp_path_factory
):
    record = _source(needs_a_library, requires=requires)
    if requires:
        with pytest.raises(pytest.skip.Exception, match="needs its extra 'extra'"):
            run(record, "records", tmp_path_factory)
    else:
        with pytest.raises(ImportError):
            run(record, "records", tmp_path_factory)


def test_a_plugin_that_is_not_installed_fails_rather_than_passing_empty(tmp_path_factory):
    [case] = cases(PluginManager(), ["gristmill-no-such-plugin"])
    context = Context(PluginManager(), Inputs(), tmp_path_factory.mktemp("kit"), tmp_path_factory)
    with pytest.raises(AssertionError, match="no plugin named 'gristmill-no-such-plugin'"):
        case(context)


def test_the_one_liner_runs_the_kit_over_a_plugin(pytester):
    pytester.makepyfile(
        test_mine='from gristmill.testing import conformance\n\ntest_it = conformance("csv")\n'
    )
    result = pytester.runpytest_inprocess("-v", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*plugins/csv/loads?*PASSED*", "*sources/tsv/split?*PASSED*"])
    assert "failed" not in result.parseoutcomes()
