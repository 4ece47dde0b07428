"""Evaluation of base vs SFT vs PPO on held-out prompts: running the models behind `evaluation_report`.

Every model answers every evaluation prompt (greedy by default). Each answer gets the reward
model's score, the rule checker's verdict when the prompt is a verifiable task, and format flags.
A pluggable pairwise judge compares the models' answers, and PPO's KL to SFT is estimated on PPO's
own samples. `pipeline.evaluation.metrics.summarise` turns all that into the typed
`EvaluationResult` (intervals, win rates, spot checks) that the report renders.

Only one policy is in memory at a time, so the report also runs on models that do not fit twice.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.data.tasks import check_answer
from pipeline.evaluation.judges import PairwiseJudge, judge_pairs
from pipeline.evaluation.metrics import summarise
from pipeline.evaluation.result import MODELS, PAIRS, Answer, EvaluationResult, pair_key
from pipeline.ppo.rollout import Rollout, encode_prompts, sample_responses, sequence_kl, sequence_logprobs
from pipeline.settings import EvaluationSettings
from pipeline.training.device import select_device, torch_cpu_threads
from pipeline.training.generation import Generation, generate, load_causal_lm

logger = logging.getLogger(__name__)


# --- KL of PPO to SFT --------------------------------------------------------------------------


@dataclass
class PolicySamples:
    """PPO's sampled responses for the KL estimate, with their log-probs log pi_ppo(y|x)."""

    batches: list[Rollout]  # one per prompt batch
    policy_logprob_sums: list[torch.Tensor]


@torch.inference_mode()
def sample_for_kl(policy, tokenizer, prompts: Sequence[str], samples_per_prompt: int, max_new_tokens: int,
                  batch_size: int, seed: int) -> PolicySamples:
    """`samples_per_prompt` answers per prompt from the policy at temperature 1, with their log-probs."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    batches, sums = [], []
    for start in range(0, len(repeated), batch_size):
        encoded = encode_prompts(tokenizer, repeated[start : start + batch_size], device)
        rollout = sample_responses(policy, encoded, max_new_tokens, 1.0, tokenizer.eos_token_id,
                                   tokenizer.pad_token_id, generator)
        batches.append(rollout)
        sums.append(sequence_logprobs(policy, rollout).cpu())
    return PolicySamples(batches, sums)


@torch.inference_mode()
def kl_to_reference(samples: PolicySamples, reference) -> dict[str, Any]:
    """KL(pi_ppo || pi_sft) of each of PPO's samples (`pipeline.ppo.rollout.sequence_kl`, nats), and their token count."""
    per_sequence, n_tokens = [], 0
    for rollout, policy_logprobs in zip(samples.batches, samples.policy_logprob_sums):
        reference_logprobs = sequence_logprobs(reference, rollout).cpu()
        per_sequence.extend(sequence_kl(policy_logprobs, reference_logprobs).tolist())
        n_tokens += int(rollout.response_mask.sum())
    return {"per_sequence": per_sequence, "n_tokens": n_tokens}


# --- running the models ------------------------------------------------------------------------


def _free_memory() -> None:
    """Call after dropping the last reference to a model, so the next one has the memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def answer_prompts(model, tokenizer, prompts: Sequence[str], settings: EvaluationSettings, desc: str) -> list[Generation]:
    return generate(
        model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        batch_size=settings.batch_size, seed=settings.seed, progress_desc=desc,
    )


def _same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def evaluate(
    model_dirs: Mapping[str, Path],
    reward_dir: Path,
    prompt_records: Sequence[dict[str, Any]],
    settings: EvaluationSettings,
    judge: PairwiseJudge,
    log: Callable[[str], None] = logger.info,
) -> EvaluationResult:
    """Answer, score, check and judge every prompt with every model; see the module docstring."""
    with torch_cpu_threads(settings.cpu_threads):
        return _evaluate(model_dirs, reward_dir, prompt_records, settings, judge, log)


def _evaluate(model_dirs, reward_dir, prompt_records, settings, judge, log) -> EvaluationResult:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.training.reward_model import score

    missing = [name for name in MODELS if name not in model_dirs]
    if missing:
        raise ValueError(f"evaluate needs model directories for {MODELS}; missing {missing}")
    if not prompt_records:
        raise ValueError("evaluate needs at least one evaluation prompt")
    prompts = [r["prompt"] for r in prompt_records]
    tasks = [r.get("task") if isinstance(r.get("task"), dict) else None for r in prompt_records]
    choice = select_device(settings.device)
    generations: dict[str, list[Generation]] = {}
    kl: dict[str, Any] | None = None

    # PPO first: its samples for the KL are scored under SFT next, so only one policy is loaded at a time.
    log(f"evaluating {len(prompts)} prompts: answers from ppo, sft, base (max_new_tokens={settings.max_new_tokens})")
    ppo, ppo_tokenizer = load_causal_lm(model_dirs["ppo"], choice)
    generations["ppo"] = answer_prompts(ppo, ppo_tokenizer, prompts, settings, "ppo answers")
    log(f"sampling {settings.kl_samples_per_prompt} PPO responses per prompt for KL(ppo || sft)")
    samples = sample_for_kl(ppo, ppo_tokenizer, prompts, settings.kl_samples_per_prompt, settings.max_new_tokens,
                            settings.batch_size, settings.seed)
    del ppo
    _free_memory()
    sft, sft_tokenizer = load_causal_lm(model_dirs["sft"], choice)
    generations["sft"] = answer_prompts(sft, sft_tokenizer, prompts, settings, "sft answers")
    if _same_vocabulary(ppo_tokenizer, sft_tokenizer):
        kl = kl_to_reference(samples, sft)
    else:
        log("PPO and SFT tokenizers differ: KL(ppo || sft) is not computed")
    del sft, samples
    _free_memory()
    base, base_tokenizer = load_causal_lm(model_dirs["base"], choice)
    generations["base"] = answer_prompts(base, base_tokenizer, prompts, settings, "base answers")
    del base
    _free_memory()

    log("scoring every answer with the reward model and the rule checker")
    reward_tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=choice.dtype, use_safetensors=True).to(choice.device)
    answers: dict[str, list[Answer]] = {}
    for name in MODELS:
        scores = score(reward, reward_tokenizer, prompts, [g.response for g in generations[name]], batch_size=settings.batch_size)
        answers[name] = [
            Answer.scored(generation, value, check_answer(task, generation.response) if task is not None else None)
            for generation, value, task in zip(generations[name], scores, tasks)
        ]
    del reward
    _free_memory()

    log(f"pairwise judging with {judge.name!r}")
    judged = {}
    for index, (x, y) in enumerate(PAIRS):
        judged[pair_key(x, y)] = judge_pairs(
            judge, prompts, [a.response for a in answers[x]], [a.response for a in answers[y]], settings.seed + index,
        )

    return summarise(answers, judged, kl, judge.name, settings)
