"""``synthetic:``: random token documents for testing a trainer without data, and the ``ids``
tokenizer: a vocabulary of token ids without text, for records that already hold ids.

``gristmill prepare synthetic:documents=1000,length=64..2048 -o DIR`` needs no download and no
tokenizer file: a synthetic source's ids belong to ``ids:VOCAB``, which is the run's tokenizer
unless the user names another (whose vocabulary must then hold them).
"""

from __future__ import annotations

from gristmill import hookimpl
from gristmill.plugin.components import SourceType, TokenizerType
from gristmill_synthetic.ids import IdsTokenizer
from gristmill_synthetic.settings import OPTIONS, PREFIX
from gristmill_synthetic.source import declared_tokenizer, open_synthetic


@hookimpl
def gristmill_sources() -> list[SourceType]:
    return [
        SourceType(
            name="synthetic",
            description="random token documents, no download: synthetic:vocab_size=V,"
            "documents=N,length=N|MIN..MAX[,sigma=S],seed=S (pre-tokenized records)",
            prefixes=(PREFIX,),
            factory=open_synthetic,
            tokenizer=declared_tokenizer,
            options=OPTIONS,
        )
    ]


@hookimpl
def gristmill_tokenizers() -> list[TokenizerType]:
    return [
        TokenizerType(
            name="ids",
            description="token ids without text: ids:VOCAB, for records that hold input_ids "
            "(encodes no text, adds no token)",
            prefixes=("ids:",),
            factory=IdsTokenizer.from_spec,
            load=IdsTokenizer.load,
            options={
                "bos_id": "which id begins a document (default: none)",
                "eos_id": "which id ends a document, kept last when truncating (default: none)",
                "pad_id": "which id pads (default: none)",
            },
        )
    ]
