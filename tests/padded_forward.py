"""The plain padded forward pass: the reference the sampler's and the packed path's log-probs are tested against."""

import torch

from pipeline.ppo.rollout import position_ids_for


def response_logprobs(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, temperature: float = 1.0
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response column of `[left-padded prompt | response]` rows,
    (batch, n_columns - response_start), from the model's own forward; padding columns get values too."""
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_for(attention_mask),
    ).logits[:, response_start - 1 : -1].float() / temperature
    targets = input_ids[:, response_start:].unsqueeze(-1)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)
