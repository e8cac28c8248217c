"""What the trainers' tests share: a small prepared dataset of prompt-completion pairs, tokenized
by the byte tokenizer, whose samples pack several documents each."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def dataset(prepared_dataset):
    return prepared_dataset(
        [
            {"prompt": f"question {i}? " * (i % 5 + 1), "completion": f"answer {i}."}
            for i in range(200)
        ]
    )
