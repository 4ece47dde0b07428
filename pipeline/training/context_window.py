"""A checkpoint's context window, and fitting prompts and answers into it.

The default model has room to spare; real checkpoints often do not (stories260K: 512 positions,
and a 512-piece vocabulary that spends about one token per 1.3 characters). Every stage that
generates gives a prompt at most `context - max_new_tokens` tokens, so prompt plus answer never run
past the positions the model was trained on, and SFT and the reward model train on at most
`context` tokens.

A prompt over its budget is cut from the LEFT: the end of a prompt (the latest user turn and the
assistant header the model answers after) is what it must see; a long dialogue loses its oldest
turns first. The cut is never silent: the stage counts the prompts it cut (`count_over_budget`)
and reports the count in its materialization metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.training.chat_format import render_prompt

# A prompt budget below this leaves no room for the chat markers and a question: a config error.
MIN_PROMPT_TOKENS = 8


def context_length(config) -> int | None:
    """The positions a model was trained on (`max_position_embeddings` and its other names); None if unstated."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(context: int | None, max_new_tokens: int) -> int | None:
    """Tokens a rendered prompt may use so that prompt + `max_new_tokens` fit in `context` (None: no limit)."""
    if context is None:
        return None
    budget = context - max_new_tokens
    if budget < MIN_PROMPT_TOKENS:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves {budget} tokens for the prompt in a context window of "
            f"{context} positions; lower max_new_tokens to at most {context - MIN_PROMPT_TOKENS}"
        )
    return budget


def fit_max_length(max_length: int, context: int | None) -> int:
    """A training `max_length` (prompt + answer) that fits in the context window."""
    return max_length if context is None else min(max_length, context)


def rendered_prompt_lengths(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Tokens of each prompt as the model sees it (chat-rendered)."""
    texts = [render_prompt(tokenizer, p) for p in prompts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def count_over_budget(tokenizer, prompts: Sequence[str], budget: int | None) -> int:
    """How many prompts `encode_left_truncated` will cut to `budget` tokens."""
    if budget is None or not prompts:
        return 0
    return sum(length > budget for length in rendered_prompt_lengths(tokenizer, prompts))


def encode_left_truncated(tokenizer, texts: Sequence[str], budget: int | None):
    """Left-padded tensors of already rendered `texts`, each cut from the left to at most `budget` tokens."""
    tokenizer.padding_side = "left"
    if budget is None:
        return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False,
                         truncation=True, max_length=budget)
    finally:
        tokenizer.truncation_side = previous
