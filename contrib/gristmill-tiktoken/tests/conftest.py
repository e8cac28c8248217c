"""A small BPE vocabulary learned here, so that no test needs the network."""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import regex
from gristmill_tiktoken.tokenizer import GPT2_PATTERN

# Learning text: words made of syllables from several scripts (accented Latin, CJK, emoji), so
# that there is always more to merge, and merges join bytes across character boundaries (" \xc3"
# is a space and half an "é") and inside multi-byte characters.
SYLLABLES = [
    "the",
    "mi",
    "ll",
    "gr",
    "ist",
    "fl",
    "our",
    "dé",
    "jà",
    "vu",
    "é",
    "té",
    "cô",
    "ca",
    "fé",
    "na",
    "ï",
    "ve",
    "fa",
    "ça",
    "de",
    "ü",
    "ber",
    "stra",
    "ße",
    "日",
    "本",
    "語",
    "テ",
    "キ",
    "ス",
    "ト",
    "中",
    "文",
    "🙂",
    "🚀",
    "def",
    "ret",
    "urn",
    "tok",
    "en",
    "ize",
    "20",
    "24",
    ",",
    ".",
    ";",
    "(",
    ")",
    ":",
]
_rng = random.Random(0)
CORPUS = " ".join(
    "".join(_rng.choice(SYLLABLES) for _ in range(_rng.randint(1, 4))) for _ in range(1500)
)


def learn_ranks(text: str, merges: int) -> dict[bytes, int]:
    """Byte-level BPE: all 256 bytes, then ``merges`` times the most frequent adjacent pair
    within the pieces of the GPT-2 split (ties broken by the pair's bytes, so it is stable)."""
    words = Counter(regex.findall(GPT2_PATTERN, text))
    pieces = {word: [bytes([b]) for b in word.encode("utf-8")] for word in words}
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, parts in pieces.items():
            for pair in itertools.pairwise(parts):
                pairs[pair] += words[word]
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        ranks[best[0] + best[1]] = len(ranks)
        for word, parts in pieces.items():
            merged, i = [], 0
            while i < len(parts):
                if tuple(parts[i : i + 2]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            pieces[word] = merged
    return ranks


def write_ranks(path: Path, ranks: dict[bytes, int]) -> Path:
    """A ranks file in tiktoken's format, written independently of the plugin's own writer."""
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


@pytest.fixture(scope="session")
def ranks() -> dict[bytes, int]:
    return learn_ranks(CORPUS, 200)


@pytest.fixture(scope="session")
def ranks_file(tmp_path_factory: pytest.TempPathFactory, ranks: dict[bytes, int]) -> Path:
    return write_ranks(tmp_path_factory.mktemp("vocab") / "small.tiktoken", ranks)


@pytest.fixture(scope="session")
def spec(ranks_file: Path) -> str:
    return f"tiktoken:{ranks_file}"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path
