"""gristmill's conformance kit over the tokenizer, with the vocabulary learned here (offline)."""

from pathlib import Path

from conftest import CORPUS, learn_ranks, write_ranks

from gristmill.testing import conformance


def _spec(folder: Path) -> str:
    return f"tiktoken:{write_ranks(folder / 'small.tiktoken', learn_ranks(CORPUS, 200))}"


test_conformance = conformance("tiktoken", tokenizers={"tiktoken": _spec})
