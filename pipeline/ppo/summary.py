"""What the PPO stage leaves behind: the SFT-vs-PPO evaluation on held-out prompts, saved models, curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.storage.contract import VALUE_MODEL_DIR
from pipeline.ppo.rollout import Rollout, encode_prompts, pack_rollout, response_logprobs_packed, reward_scores, sample_responses

CURVE_PANELS = (
    ("rm_score", "RM score"),
    ("kl", "KL to SFT (per sequence)"),
    ("total_reward", "total reward"),
    ("entropy", "entropy (per token)"),
    ("response_length", "response length (tokens)"),
    ("value_loss", "value loss"),
    ("clip_fraction", "clip fraction"),
    ("explained_variance", "explained variance"),
    ("beta", "beta (KL coefficient)"),
)


@torch.no_grad()
def evaluate_against_reference(
    policy, reference_policy, reward_model, tokenizer, prompts: Sequence[str], settings, device: torch.device
) -> dict[str, Any]:
    """Sample answers to held-out prompts from SFT and from PPO; compare RM score, length and KL to SFT.

    `kl_to_sft` is the mean over PPO samples of sum_t [log pi_ppo(y_t) - log pi_sft(y_t)], an
    unbiased estimate of the per-sequence KL(pi_ppo || pi_sft) at the sampling temperature.
    """
    repeated = [p for p in prompts for _ in range(settings.n_eval_samples)]
    sft_scores, ppo_scores, sft_lengths, ppo_lengths, kls = [], [], [], [], []
    sft_texts, ppo_texts = [], []
    for start in range(0, len(repeated), settings.batch_size):
        batch = encode_prompts(tokenizer, repeated[start : start + settings.batch_size], device)
        generator = torch.Generator(device=device).manual_seed(settings.seed + 7 + start)
        with reference_policy.sampler() as sft_model:
            sft = sample_responses(sft_model, batch, settings.max_new_tokens, settings.temperature,
                                   tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        ppo = sample_responses(policy, batch, settings.max_new_tokens, settings.temperature,
                               tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        packed = pack_rollout(ppo)  # one packing serves the PPO answers' RM score and their KL
        sft_scores += reward_scores(reward_model, sft).tolist()
        ppo_scores += reward_scores(reward_model, packed).tolist()
        sft_lengths += sft.response_lengths.tolist()
        ppo_lengths += ppo.response_lengths.tolist()
        log_ratio = response_logprobs_packed(policy, packed, settings.temperature) - reference_policy.logprobs(packed, settings.temperature)
        kls += packed.to_padded(log_ratio).sum(1).tolist()
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


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, 3, figsize=(12, 9))
    episodes = [record["episodes"] for record in history]
    for axis, (key, title) in zip(axes.flat, CURVE_PANELS):
        axis.plot(episodes, [record.get(key) for record in history], marker=".")
        axis.set_title(title)
        axis.set_xlabel("episodes")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def mean_or_nan(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
