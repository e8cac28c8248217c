"""Hugging Face tokenizers: ``hf:NAME_OR_PATH`` (transformers) and a path to a ``tokenizer.json``.

- ``hf:NAME_OR_PATH[@REVISION]``: any fast tokenizer ``transformers.AutoTokenizer`` loads, from a
  local folder (offline) or a Hub id. A folder with a ``tokenizer.json`` is read as transformers
  reads it without importing transformers (:mod:`gristmill_hf_tokenizers.pretrained`); others
  are loaded by transformers. Chat examples are rendered with the tokenizer's own chat template
  when it has one, in jinja2's sandbox (:mod:`gristmill_hf_tokenizers.chat`,
  :mod:`gristmill_hf_tokenizers.template`).
- ``PATH/tokenizer.json`` (any path ending in ``tokenizer.json``): a ``tokenizers`` JSON file, no
  transformers needed. Chat examples use gristmill's built-in template.

Both encode batches with ``add_special_tokens=False``, through the engine chosen by ``engine=``:
gigatoken when it can (checked against the library's own ids), else the library's batch API (see
:mod:`gristmill_hf_tokenizers.engines`); gristmill adds BOS/EOS itself by the policy in
:mod:`gristmill_hf_tokenizers.common`. The libraries are imported only when a tokenizer is
created, so importing this plugin stays cheap.
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import TokenizerType
from gristmill_hf_tokenizers.engines import ENGINES
from gristmill_hf_tokenizers.hf import HFTokenizer
from gristmill_hf_tokenizers.json_file import JSONTokenizer


@hookimpl
def gristmill_tokenizers() -> list[TokenizerType]:
    return [
        TokenizerType(
            name="hf",
            description="a Hugging Face tokenizer: hf:ORG/NAME[@revision] or hf:FOLDER; "
            "uses its chat template",
            prefixes=("hf:",),
            factory=HFTokenizer.from_spec,
            load=HFTokenizer.load,
            engines=ENGINES,
            requires="hf",
        ),
        TokenizerType(
            name="tokenizer-json",
            description="a tokenizers JSON file: PATH/tokenizer.json",
            suffixes=("tokenizer.json",),
            factory=JSONTokenizer.from_spec,
            load=JSONTokenizer.load,
            engines=ENGINES,
            requires="hf",
        ),
    ]
