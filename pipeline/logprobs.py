"""Per-token log-probabilities of a response under a causal LM (shared by PPO and evaluation)."""

from __future__ import annotations

import torch


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, temperature: float = 1.0
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response column.

    `input_ids` is [left-padded prompt | response], with the response starting at column
    `response_start`; the result has shape (batch, n_columns - response_start). Padding columns
    after an EOS get values too: callers mask them.
    """
    logits = response_logits(model, input_ids, attention_mask, response_start).float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, response_start:].unsqueeze(-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int) -> torch.Tensor:
    """Next-token logits that predict each response column, (batch, n_columns - response_start, vocab).

    Only the positions that predict response tokens go through the LM head (`logits_to_keep`), so
    prompt positions never materialise a vocabulary-sized row.
    """
    n_response = input_ids.shape[1] - response_start
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
        logits_to_keep=n_response + 1,
    ).logits
    return logits[:, :-1]
