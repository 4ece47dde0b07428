"""Text normalisation, word n-grams and the compared fields shared by the dedup and eval-leak gates.

Both gates must agree on when two texts are "the same": case, whitespace and punctuation do not
count, words and numbers do (so "What is 12 + 35?" and "what is 12+35" match, but
"What is 12 + 36?" does not).
"""

from __future__ import annotations

import re
import unicodedata

# The text a training record carries, prompt first, by data asset; fields a record lacks are skipped
# (`quality_gates.dedup.compared_fields`). The dedup and eval-leak gates compare these, and so does the
# cleaning that drops what they flag (`quality_gates.decontamination`).
TRAINING_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "sft_data": ("prompt", "completion"),
    "preference_data": ("prompt", "chosen", "rejected"),
    "ppo_prompts": ("prompt", "reference"),
}

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
