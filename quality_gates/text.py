"""Text normalisation and word n-grams shared by the dedup and eval-leak gates.

Both gates must agree on when two texts are "the same": case, whitespace and punctuation do not
count, words and numbers do (so "What is 12 + 35?" and "what is 12+35" match, but
"What is 12 + 36?" does not).
"""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lower case, NFKC, punctuation replaced by spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _NOT_WORD.sub(" ", text)).strip()


def words(text: str) -> list[str]:
    return normalise_text(text).split()


def word_ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The contiguous n-word sequences; a text shorter than n is its own single n-gram."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
