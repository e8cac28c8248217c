"""gristmill_tiktoken: tiktoken's BPE encodings as a gristmill tokenizer (``tiktoken:SPEC``).

- ``tiktoken:NAME``: a named encoding (``o200k_base``, ``cl100k_base``, ``r50k_base``…); tiktoken
  downloads it the first time and caches it.
- ``tiktoken:PATH.tiktoken``: a local ranks file in tiktoken's format.
- ``tiktoken:PATH.json``: a settings file naming a ranks file, its split pattern and specials.

See :mod:`gristmill_tiktoken.tokenizer`. tiktoken is imported only when a tokenizer is created,
so listing plugins stays cheap.
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import TokenizerType
from gristmill_tiktoken.tokenizer import PREFIX, TiktokenTokenizer

__all__ = ["TiktokenTokenizer", "gristmill_tokenizers"]


@hookimpl
def gristmill_tokenizers() -> list[TokenizerType]:
    return [
        TokenizerType(
            name="tiktoken",
            description="a tiktoken BPE: tiktoken:NAME (o200k_base…), tiktoken:PATH.tiktoken "
            "or tiktoken:PATH.json",
            prefixes=(PREFIX,),
            factory=TiktokenTokenizer.from_spec,
            load=TiktokenTokenizer.load,
            options={
                "pattern": "the split pattern (a regular expression)",
                "special_tokens": "special token name -> id",
                "bos": "the special token added before every document",
                "eos": "the special token added after every document",
                "pad": "the special token that pads",
            },
        )
    ]
