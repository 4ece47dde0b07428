"""Evaluation prompts that leaked into training data.

A training record is contaminated by an evaluation prompt when
- its prompt equals the evaluation prompt after normalisation (case, whitespace, punctuation), or
- any of its text fields shares a 13-word sequence with the evaluation prompt (the n-gram overlap
  test of the GPT-3 contamination analysis, Brown et al. 2020, appendix C), or
- an evaluation prompt shorter than 13 words (but at least `min_contained_words`) occurs as a
  whole, word for word, inside one of its text fields: the GPT-3 analysis uses the whole example
  as the n-gram when it is shorter than n.

An index of the evaluation n-grams is built once, and each training record is scanned once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quality_gates.dedup import compared_fields
from quality_gates.text import normalise_text, word_ngrams


class LeakSettings(BaseModel):
    """Settings of the eval-leak gate; the `eval_leak` checks' config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ngram_words: int = Field(13, gt=0, description="n of the n-gram overlap test (13 as in GPT-3)")
    min_contained_words: int = Field(
        4, gt=0, description="a shorter evaluation prompt is only matched exactly, never as a contained phrase"
    )
    max_leaked_records: int = Field(0, ge=0, description="how many contaminated training records are tolerated")


def flag_eval_leaks(
    training_records: Sequence[dict[str, Any]],
    candidate_fields: tuple[str, ...],
    eval_prompts: Sequence[str],
    settings: LeakSettings,
) -> list[dict[str, Any]]:
    """What the eval_leak gate flags: leaks into the candidate fields every record has (the one entry
    point of the gate and of the data assets' `drop_eval_leaks`)."""
    return find_eval_leaks(training_records, compared_fields(training_records, candidate_fields), eval_prompts, settings)


def find_eval_leaks(
    training_records: Sequence[dict[str, Any]],
    text_fields: Sequence[str],
    eval_prompts: Sequence[str],
    settings: LeakSettings,
) -> list[dict[str, Any]]:
    """One row per contaminated training record (rows numbered from 1), naming the eval prompt it contains."""
    n = settings.ngram_words
    exact: dict[str, int] = {}
    ngram_owner: dict[tuple[str, ...], int] = {}
    short_phrases: dict[tuple[str, ...], int] = {}
    for index, prompt in enumerate(eval_prompts):
        normalised = normalise_text(prompt)
        if not normalised:
            continue
        exact.setdefault(normalised, index)
        tokens = normalised.split()
        if len(tokens) >= n:
            for gram in word_ngrams(tokens, n):
                ngram_owner.setdefault(gram, index)
        elif len(tokens) >= settings.min_contained_words:
            short_phrases.setdefault(tuple(tokens), index)
    phrase_lengths = sorted({len(p) for p in short_phrases})

    leaks = []
    for row, record in enumerate(training_records, start=1):
        match = _match(record, text_fields, exact, ngram_owner, short_phrases, phrase_lengths, n)
        if match is not None:
            eval_index, how, field, shared = match
            leaks.append({
                "row": row, "field": field, "match": how, "eval_prompt": eval_prompts[eval_index],
                "training_text": record[field], "shared_words": shared,
            })
    return leaks


def _match(record, text_fields, exact, ngram_owner, short_phrases, phrase_lengths, n):
    prompt = record.get(text_fields[0])
    normalised_prompt = normalise_text(prompt) if isinstance(prompt, str) else None
    if normalised_prompt in exact:
        return exact[normalised_prompt], "exact", text_fields[0], normalised_prompt
    for field in text_fields:
        value = record.get(field)
        if not isinstance(value, str):
            continue
        tokens = normalise_text(value).split()
        if ngram_owner and len(tokens) >= n:
            for gram in word_ngrams(tokens, n):
                if gram in ngram_owner:
                    return ngram_owner[gram], f"{n}-gram", field, " ".join(gram)
        for length in phrase_lengths:
            for start in range(len(tokens) - length + 1):
                phrase = tuple(tokens[start : start + length])
                if phrase in short_phrases:
                    return short_phrases[phrase], "contained", field, " ".join(phrase)
    return None
