"""Batched generation with left padding, shared by the probe, SFT evaluation and the evaluation report.

torch is imported by `generate` itself: `Generation` is also the base of the evaluation's `Answer`,
which the report reads without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.training.chat_format import ROLE_MARKERS, render_prompt
from pipeline.training.context_window import context_length, encode_left_truncated, prompt_budget


@dataclass(frozen=True)
class Generation:
    prompt: str
    response: str
    n_tokens: int
    ended_with_eos: bool
    echoed_role_marker: bool

    @property
    def well_formatted(self) -> bool:
        """Ends with EOS and does not echo a chat role marker."""
        return self.ended_with_eos and not self.echoed_role_marker


def load_causal_lm(model_dir, choice):
    """(model, tokenizer) of an HF causal-LM directory, on `choice`'s device and dtype, safetensors only, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=choice.dtype, use_safetensors=True)
    return model.to(choice.device).eval(), tokenizer


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 32,
    seed: int = 0,
) -> list[Generation]:
    """Answer each (raw, un-templated) prompt; temperature 0 means greedy decoding.

    A prompt longer than the model's context window leaves room for (`max_new_tokens`) is cut from
    the left; callers that report it count the cuts with `context_window.count_over_budget`.
    """
    import torch

    with torch.no_grad():
        return _generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size, seed)


def _generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size, seed) -> list[Generation]:
    import torch

    device = next(model.parameters()).device
    budget = prompt_budget(context_length(model.config), max_new_tokens)
    model.eval()
    torch.manual_seed(seed)
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        texts = [render_prompt(tokenizer, p) for p in batch_prompts]
        encoded = encode_left_truncated(tokenizer, texts, budget).to(device)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        output = model.generate(
            **encoded,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        responses = output[:, encoded["input_ids"].shape[1] :]
        for prompt, tokens in zip(batch_prompts, responses.tolist()):
            results.append(to_generation(tokenizer, prompt, tokens))
    return results


def to_generation(tokenizer, prompt: str, tokens: list[int]) -> Generation:
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended_with_eos = eos_id in tokens
    if ended_with_eos:
        tokens = tokens[: tokens.index(eos_id)]
    tokens = [t for t in tokens if t != pad_id]
    raw = tokenizer.decode(tokens, skip_special_tokens=False)
    echoed = any(marker in raw for marker in ROLE_MARKERS)
    response = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Generation(prompt, response, len(tokens) + int(ended_with_eos), ended_with_eos, echoed)
