"""Safety: nothing gristmill reads runs code. No pickle in the format or the cache, a Hub
dataset's loading script and a tokenizer's custom code are never executed, and every file a
manifest names stays inside the dataset (tests/store/test_verify.py) unless a plugin is blocked by name
(tests/plugin/test_plugins.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import gristmill
from gristmill.errors import GristmillError
from tests.helpers import train_bpe

ROOT = Path(__file__).resolve().parent.parent
CODE_THAT_RUNS_CODE = re.compile(
    r"^\s*(import pickle|from pickle|import dill|import cloudpickle)"
    r"|allow_pickle\s*=\s*True|torch\.load\(|trust_remote_code\s*=\s*True",
    re.MULTILINE,
)


# The conformance kit pickles a source's pieces and loads them back, as prepare's workers
# receive them: objects it made itself, in a test, never data read from anywhere.
KIT_PICKLES = ROOT / "core" / "src" / "gristmill" / "testing" / "sources.py"


def test_no_code_path_unpickles_or_trusts_remote_code():
    sources = [*ROOT.glob("core/src/**/*.py"), *ROOT.glob("plugins/src/**/*.py")]
    assert len(sources) > 30 and KIT_PICKLES in sources
    offenders = [
        f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
        for path in sources
        if path != KIT_PICKLES
        for m in CODE_THAT_RUNS_CODE.finditer(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_dataset_and_its_plan_cache_load_without_pickle(tmp_path, write_jsonl):
    src = write_jsonl([{"text": f"doc {i} " * (i % 9 + 1)} for i in range(200)])
    gristmill.prepare(src, tmp_path / "ds", progress=False)
    gristmill.open_dataset(tmp_path / "ds", seq_len=64, packer="first-fit")
    json.loads((tmp_path / "ds" / "manifest.json").read_text())  # JSON, nothing else
    [plan] = (tmp_path / "ds" / ".gristmill-plans").iterdir()
    with np.load(plan, allow_pickle=False) as stored:  # object arrays would refuse to load
        assert all(stored[k].dtype != object for k in stored.files)


def test_a_hub_dataset_script_is_never_run(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "scripted"
    folder.mkdir()
    marker = tmp_path / "script-ran"
    (folder / "scripted.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    (folder / "data.jsonl").write_text('{"text": "plain data"}\n')
    with pytest.raises(GristmillError, match=r"hub:.*scripted.*scripted\.py"):
        list(gristmill.stream(f"hub:{folder}"))  # refused, naming the script
    assert not marker.exists()


def test_a_tokenizers_custom_code_is_never_run(tmp_path, write_jsonl):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    tok = train_bpe(["some text to learn from"] * 20, vocab_size=300, specials=["</s>"])
    folder = tmp_path / "custom-tokenizer"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    marker = tmp_path / "custom-code-ran"
    (folder / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CustomTokenizer",
                "auto_map": {"AutoTokenizer": [None, "custom.CustomTokenizer"]},
                "eos_token": "</s>",
            }
        )
    )
    src = write_jsonl([{"text": "some text"}])
    with pytest.raises(GristmillError, match=r"custom-tokenizer.*contains custom code"):
        gristmill.prepare(src, tmp_path / "out", tokenizer=f"hf:{folder}", progress=False)
    assert not marker.exists()
