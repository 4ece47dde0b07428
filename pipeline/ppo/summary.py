"""What the PPO stage leaves behind: the SFT-vs-PPO evaluation on held-out prompts, and the saved models.

The training curves are drawn by `pipeline.training.curves`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.data.statistics import mean_or_nan
from pipeline.ppo.rollout import (
    Rollout,
    encode_prompts,
    pack_rollout,
    reward_scores,
    sample_responses,
    sequence_kl,
    sequence_logprobs,
)
from pipeline.storage.contract import VALUE_MODEL_DIR


@torch.no_grad()
def evaluate_against_reference(
    policy, reference_policy, reward_model, tokenizer, prompts: Sequence[str], settings, device: torch.device,
    max_prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """Sample answers to held-out prompts from SFT and from PPO; compare RM score, length and KL to SFT.

    `kl_to_sft` is the mean over PPO samples of `sequence_kl` (sum_t [log pi_ppo(y_t) - log pi_sft(y_t)]),
    an unbiased estimate of the per-sequence KL(pi_ppo || pi_sft) at the sampling temperature: the same
    measurement as the evaluation report's `kl_ppo_vs_sft`, on the held-out tail of `ppo_prompts`
    at PPO's training temperature instead of on `eval_prompts` at temperature 1.
    """
    repeated = [p for p in prompts for _ in range(settings.n_eval_samples)]
    sft_scores, ppo_scores, sft_lengths, ppo_lengths, kls = [], [], [], [], []
    sft_texts, ppo_texts = [], []
    for start in range(0, len(repeated), settings.batch_size):
        batch = encode_prompts(tokenizer, repeated[start : start + settings.batch_size], device, max_prompt_tokens)
        generator = torch.Generator(device=device).manual_seed(settings.seed + 7 + start)
        with reference_policy.module() as sft_model:
            sft = sample_responses(sft_model, batch, settings.max_new_tokens, settings.temperature,
                                   tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        ppo = sample_responses(policy, batch, settings.max_new_tokens, settings.temperature,
                               tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        packed = pack_rollout(ppo)  # one packing serves the PPO answers' RM score and their KL
        sft_scores += reward_scores(reward_model, sft).tolist()
        ppo_scores += reward_scores(reward_model, packed).tolist()
        sft_lengths += sft.response_lengths.tolist()
        ppo_lengths += ppo.response_lengths.tolist()
        policy_logprobs = sequence_logprobs(policy, packed, settings.temperature)
        with reference_policy.module() as sft_model:
            reference_logprobs = sequence_logprobs(sft_model, packed, settings.temperature)
        kls += sequence_kl(policy_logprobs, reference_logprobs).tolist()
        sft_texts += decode_responses(tokenizer, sft)
        ppo_texts += decode_responses(tokenizer, ppo)
    response_length_sft = mean_or_nan(sft_lengths)
    response_length_ppo = mean_or_nan(ppo_lengths)
    samples = [
        {"prompt": repeated[i], "sft_response": sft_texts[i], "sft_score": sft_scores[i],
         "ppo_response": ppo_texts[i], "ppo_score": ppo_scores[i]}
        for i in range(0, len(repeated), settings.n_eval_samples)
    ][:8]
    return {
        "rm_score_sft": mean_or_nan(sft_scores),
        "rm_score_ppo": mean_or_nan(ppo_scores),
        "kl_to_sft": mean_or_nan(kls),
        "response_length_sft": response_length_sft,
        "response_length_ppo": response_length_ppo,
        "response_length_ratio": response_length_ppo / response_length_sft if response_length_sft else float("nan"),
        "n_eval_answers": len(repeated),
        "samples": samples,
    }


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    texts = []
    for ids, length in zip(rollout.response_ids.tolist(), rollout.response_lengths.tolist()):
        texts.append(tokenizer.decode(ids[:length], skip_special_tokens=True).strip())
    return texts


def save_models(policy, value_model, tokenizer, output_dir: Path, merge_lora: bool) -> None:
    """The policy as a plain HF causal-LM dir at `output_dir` (LoRA merged in); the value model under `value_model/`."""
    if merge_lora:
        policy = policy.merge_and_unload()
    policy.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    value_model.save_pretrained(output_dir / VALUE_MODEL_DIR)
    tokenizer.save_pretrained(output_dir / VALUE_MODEL_DIR)
