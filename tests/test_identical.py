"""The bytes gristmill writes and the samples it serves stay what a reference build produced.

Each case prepares, streams or converts inputs made here from arithmetic alone (no stdlib text,
which differs between Pythons) and hashes everything the user gets: every file of a dataset (the
manifest with its random generation and seal masked), the rejects, the samples of several packers,
a stream's samples and convert's records. ``tests/data/identical.json`` holds the hashes; a change
that alters an output on purpose rewrites it with ``PYTHONPATH=. python tests/test_identical.py --write`` and
says why in its commit message.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.store.convert import convert
from tests.helpers import tree_bytes

EXPECTED = Path(__file__).parent / "data" / "identical.json"
TOKENIZER = Path(__file__).parent / "data" / "identical-tokenizer.json"
WORDS = [
    "mill",
    "grain",
    "flour",
    "stone",
    "wheel",
    "water",
    "river",
    "sack",
    "baker",
    "bread",
    "oven",
    "loaf",
    "yeast",
    "salt",
    "field",
    "harvest",
    "barley",
    "rye",
    "oat",
    "chaff",
    "husk",
    "bran",
    "sieve",
    "hopper",
    "shaft",
    "gear",
    "cog",
    "axle",
    "sluice",
    "weir",
]


def _text(n: int, words: int) -> str:
    """Deterministic prose: word k of text n picked by arithmetic, with some punctuation."""
    picked = [WORDS[(n * 7 + k * k * 3 + k) % len(WORDS)] for k in range(words)]
    return " ".join(w + ("." if (n + k) % 9 == 8 else "") for k, w in enumerate(picked))


def _inputs(root: Path) -> dict[str, Path]:
    """The input files: text, chat and prompt/completion JSONL, a CSV with a bad row."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        name: root / f"{name}.{ext}"
        for name, ext in (("text", "jsonl"), ("chat", "jsonl"), ("qa", "jsonl"), ("table", "csv"))
    }
    with open(files["text"], "w", encoding="utf-8") as f:
        for n in range(300):
            f.write(json.dumps({"text": _text(n, 5 + n % 60)}) + "\n")
            if n % 50 == 0:  # exact duplicates, for dedup
                f.write(json.dumps({"text": _text(n, 5 + n % 60)}) + "\n")
    with open(files["chat"], "w", encoding="utf-8") as f:
        for n in range(120):
            turns = [{"role": "system", "content": "Be brief."}] if n % 3 == 0 else []
            for t in range(1 + n % 3):
                turns += [
                    {"role": "user", "content": _text(n + t, 4 + t)},
                    {"role": "assistant", "content": _text(n * 2 + t, 3 + n % 11)},
                ]
            f.write(json.dumps({"messages": turns}) + "\n")
    with open(files["qa"], "w", encoding="utf-8") as f:
        for n in range(150):
            record = {"prompt": _text(n, 3 + n % 7), "completion": _text(n + 1, 2 + n % 13)}
            f.write(json.dumps(record) + "\n")
        f.write('{"prompt": "no completion here"}\n')  # skipped under on_error="skip"
    with open(files["table"], "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        for n in range(100):
            writer.writerow(
                [_text(n, 6), _text(n + 3, 1 + n % 5) + ("\nsecond line" * (n % 4 == 0))]
            )
    return files


def _digest(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(len(chunk).to_bytes(8, "little"))
        h.update(chunk)
    return h.hexdigest()


def _tree(root: Path) -> str:
    """One hash of every file under ``root`` (names and bytes, the manifest masked)."""
    return _digest(name.encode() + b"\0" + data for name, data in tree_bytes(root).items())


def _samples(samples: Iterable[dict[str, np.ndarray]]) -> str:
    return _digest(
        key.encode() + np.ascontiguousarray(value).tobytes()
        for sample in samples
        for key, value in sorted(sample.items())
    )


def _byte_cases(inputs: dict[str, Path], out: Path) -> dict[str, str]:
    text = out / "text"
    gristmill.prepare(inputs["text"], text, progress=False, workers=1)
    mixed = out / "mixed"
    gristmill.prepare(
        [inputs["text"], inputs["qa"]],
        mixed,
        val_fraction=0.2,
        seed=3,
        dedup=True,
        max_doc_tokens=120,
        tokens_per_shard=4000,
        task_bytes=6000,
        on_error="skip",
        tokenizer_options={"add_bos": True},
        progress=False,
        workers=2,
    )
    table = out / "table"
    gristmill.prepare(inputs["table"], table, fields={"prompt": "question", "completion": "answer"})
    found = {
        "prepare/text": _tree(text),
        "prepare/table": _tree(table),
        "prepare/mixed": _tree(mixed),
        "prepare/mixed.rejects": hashlib.sha256(
            (out / "mixed.rejects.jsonl").read_bytes()
        ).hexdigest(),
    }
    for name, options in {
        "none": {},
        "none/shifted": {"labels": "shifted"},
        "first-fit": {"packer": "first-fit", "seq_len": 96},
        "first-fit/fragment": {"packer": "first-fit", "seq_len": 64, "overlong": "fragment"},
        "greedy-stream": {"packer": "greedy-stream", "seq_len": 96},
        "concat-chunk": {"packer": "concat-chunk", "seq_len": 80},
    }.items():
        for split in ("train", "val"):
            ds = gristmill.open_dataset(mixed, split, **options)
            found[f"serve/{name}/{split}"] = _samples(ds[i] for i in range(len(ds)))
    stream = gristmill.stream(
        [inputs["text"], inputs["chat"]], seq_len=96, chunk_bytes=4096, piece_bytes=16384
    )
    found["stream/greedy-stream"] = _samples(stream)
    for suffix in ("jsonl", "parquet"):
        if suffix == "parquet" and not _has("pyarrow"):
            continue
        converted = out / f"converted.{suffix}"
        convert(
            inputs["table"],
            converted,
            format="prompt-completion",
            fields={"prompt": "question", "completion": "answer"},
        )
        found[f"convert/{suffix}"] = _records(converted)
    return found


def _records(path: Path) -> str:
    """convert's records, read back (Parquet's bytes name the pyarrow version that wrote them)."""
    if path.suffix == ".jsonl":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def _bpe_cases(inputs: dict[str, Path], out: Path) -> dict[str, str]:
    chat = out / "chat"
    tokenizer = inputs["chat"].parent / "tokenizer.json"  # relative: the manifest records it
    shutil.copyfile(TOKENIZER, tokenizer)
    gristmill.prepare(
        [inputs["chat"], inputs["qa"]],
        chat,
        tokenizer=str(tokenizer),
        on_error="skip",
        val_fraction=0.25,
        progress=False,
        workers=1,
        task_bytes=5000,
    )
    found = {"prepare/chat-bpe": _tree(chat)}
    ds = gristmill.open_dataset(chat, packer="first-fit", seq_len=128)
    found["serve/chat-bpe/first-fit"] = _samples(ds[i] for i in range(len(ds)))
    return found


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


CASES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Path], Path], dict[str, str]]]] = {
    "byte": ((), _byte_cases),
    "bpe": (("tokenizers",), _bpe_cases),
}


@pytest.mark.parametrize("case", CASES)
def test_outputs_are_byte_identical_to_the_reference(case, tmp_path, monkeypatch):
    needs, run = CASES[case]
    for module in needs:
        pytest.importorskip(module, reason=f"the {case} case needs {module}")
    monkeypatch.chdir(tmp_path)  # the manifest and rejects name the inputs as given: relative
    found = run(_inputs(Path("in")), Path("out"))
    expected = json.loads(EXPECTED.read_text())[case]
    if not _has("pyarrow"):
        expected = {k: v for k, v in expected.items() if k != "convert/parquet"}
    assert found == expected


def _write(root: Path) -> None:
    results = {}
    for case, (_, run) in CASES.items():
        os.chdir(root)
        os.mkdir(case)
        os.chdir(case)
        results[case] = run(_inputs(Path("in")), Path("out"))
    EXPECTED.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp))
