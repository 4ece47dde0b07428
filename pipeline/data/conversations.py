"""Chat conversations: lists of {"role", "content"} messages, as found in chat datasets.

Downstream stages (reward model, PPO, evaluation) answer a prompt that is one string rendered as a
single user turn, so a multi-turn context is flattened into a role-labelled transcript for them.
Conversational SFT instead renders the real turns with the tokenizer's own chat template and trains
on one prompt/completion example per assistant turn: every token of the context is masked, every
token of the answer (and its EOS) is trained on. This works with any chat template, whereas TRL's
`assistant_only_loss` needs `{% generation %}` markers that most hub templates (and ours) lack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.data.records import DataError
from pipeline.settings import AssistantTurns

ROLES = ("system", "user", "assistant")
TRANSCRIPT_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def check_messages(value: Any, source: str | Path, row: int, field: str) -> list[dict[str, str]]:
    """A clean copy of a conversation, ending at its last assistant turn.

    Raises DataError (naming source, row and field) unless the value is a list of messages with a
    known role and non-empty string content, starting with a user turn (after any system turns)
    and holding at least one assistant turn. Turns after the last assistant turn train nothing
    and are dropped.
    """
    if not isinstance(value, (list, tuple)):
        raise DataError(source, f"expected a list of messages, got {type(value).__name__}", row=row, field=field)
    messages = []
    for turn, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise DataError(source, f"message {turn} is a {type(message).__name__}, expected an object with role and content", row=row, field=field)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(source, f"message {turn} has role {role!r}; expected one of {', '.join(ROLES)}", row=row, field=field)
        if not isinstance(content, str):
            raise DataError(source, f"message {turn} ({role}) content is {type(content).__name__}, expected a string", row=row, field=field)
        if not content.strip():
            raise DataError(source, f"message {turn} ({role}) has empty content", row=row, field=field)
        messages.append({"role": role, "content": content})
    assistant_turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns:
        raise DataError(source, "dialogue has no assistant turn", row=row, field=field)
    first_turn = next((m["role"] for m in messages if m["role"] != "system"), None)
    if first_turn != "user":
        raise DataError(source, f"dialogue must start with a user turn (after any system turns), starts with {first_turn}", row=row, field=field)
    return messages[: assistant_turns[-1] + 1]


def split_final_answer(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """(context before the last assistant turn, that turn's content) of a checked conversation."""
    return list(messages[:-1]), messages[-1]["content"]


def transcript_prompt(context: Sequence[dict[str, str]]) -> str:
    """One prompt string for a context: a lone user turn as is, anything longer as a labelled transcript."""
    if len(context) == 1 and context[0]["role"] == "user":
        return context[0]["content"]
    return "\n\n".join(f"{TRANSCRIPT_LABELS[m['role']]}: {m['content'].strip()}" for m in context)


def assistant_turn_examples(
    tokenizer, messages: Sequence[dict[str, str]], turns: AssistantTurns = "all"
) -> list[tuple[str, str]]:
    """(rendered context, answer) for each assistant turn ('all') or the final one ('last').

    The context is rendered by the tokenizer's chat template with the generation prompt, which is
    exactly the prefix the template gives the full conversation; TRL appends EOS to the answer.
    """
    positions = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if turns == "last":
        positions = positions[-1:]
    return [
        (
            tokenizer.apply_chat_template(list(messages[:i]), add_generation_prompt=True, tokenize=False),
            messages[i]["content"],
        )
        for i in positions
    ]
