"""Evaluation of base vs SFT vs PPO on held-out prompts: running the models behind `evaluation_report`.

Every model answers every evaluation prompt the way PPO trains it, sampled at temperature 1 with
several answers per prompt (the primary comparison), and greedily (the `greedy` comparison). Each
answer gets the reward model's score, the rule checker's verdict when the prompt is a verifiable
task, whether it is about the concept an explanation prompt asks for, and format flags.
A pluggable pairwise judge compares the models' answers, and PPO's KL to SFT is estimated on PPO's
own samples. `pipeline.evaluation.metrics.summarise` turns all that into the typed
`EvaluationResult` (intervals, win rates, spot checks) that the report renders.

Only one policy is in memory at a time, so the report also runs on models that do not fit twice.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.data.glossary import closest_concept
from pipeline.data.tasks import check_answer
from pipeline.evaluation.judges import PairwiseJudge, judge_pairs
from pipeline.evaluation.metrics import summarise
from pipeline.evaluation.result import MODELS, PAIRS, Answer, Decoding, EvaluationResult, pair_key
from pipeline.ppo.rollout import Rollout, encode_prompts, sample_responses, sequence_kl, sequence_logprobs
from pipeline.settings import EvaluationSettings
from pipeline.training.context_window import context_length, count_over_budget, prompt_budget
from pipeline.training.device import select_device, torch_cpu_threads
from pipeline.training.generation import Generation, generate, load_causal_lm, to_generation
from pipeline.training.progress import stage_progress
from pipeline.training.reward_model import score

logger = logging.getLogger(__name__)


# --- sampled answers, and the KL of PPO to SFT on them ------------------------------------------


@dataclass
class SampledAnswers:
    """Answers sampled from a policy, as rollouts (for log-probs) and as decoded generations."""

    generations: list[Generation]  # `samples_per_prompt` consecutive answers per prompt
    batches: list[Rollout]  # one per prompt batch
    logprob_sums: list[torch.Tensor]  # log pi(y|x) of each answer, per batch (only when asked for)


@torch.inference_mode()
def sample_answers(policy, tokenizer, prompts: Sequence[str], samples_per_prompt: int, temperature: float,
                   max_new_tokens: int, batch_size: int, seed: int, with_logprobs: bool = False) -> SampledAnswers:
    """`samples_per_prompt` answers per prompt, sampled the way PPO samples its rollouts (truncated at EOS)."""
    device = next(policy.parameters()).device
    max_prompt_tokens = prompt_budget(context_length(policy.config), max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    generations, batches, sums = [], [], []
    for start in range(0, len(repeated), batch_size):
        batch_prompts = repeated[start : start + batch_size]
        batch = encode_prompts(tokenizer, batch_prompts, device, max_prompt_tokens)
        rollout = sample_responses(policy, batch, max_new_tokens, temperature, tokenizer.eos_token_id,
                                   tokenizer.pad_token_id, generator)
        batches.append(rollout)
        if with_logprobs:
            sums.append(sequence_logprobs(policy, rollout).cpu())
        for prompt, ids, length in zip(batch_prompts, rollout.response_ids.tolist(), rollout.response_lengths.tolist()):
            generations.append(to_generation(tokenizer, prompt, ids[:length]))
    return SampledAnswers(generations, batches, sums)


@torch.inference_mode()
def kl_to_reference(samples: SampledAnswers, reference) -> dict[str, Any]:
    """KL(pi_ppo || pi_sft) of each of PPO's samples (`pipeline.ppo.rollout.sequence_kl`, nats), and their token count."""
    per_sequence, n_tokens = [], 0
    for rollout, policy_logprobs in zip(samples.batches, samples.logprob_sums):
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


def _same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def concept_matched(record: Mapping[str, Any], response: str) -> bool | None:
    """Explanation prompts that name a glossary concept: is the answer about that concept? None otherwise."""
    if record.get("kind") != "explanation" or not record.get("concept"):
        return None
    closest = closest_concept(response)
    return closest is not None and closest.name == record["concept"]


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
    missing = [name for name in MODELS if name not in model_dirs]
    if missing:
        raise ValueError(f"evaluate needs model directories for {MODELS}; missing {missing}")
    if not prompt_records:
        raise ValueError("evaluate needs at least one evaluation prompt")
    prompts = [r["prompt"] for r in prompt_records]
    choice = select_device(settings.device)
    sampled = settings.temperature > 0
    decoding = Decoding(settings.temperature, settings.samples_per_prompt if sampled else 1)
    greedy_too = sampled and settings.greedy_comparison
    generations: dict[str, list[Generation]] = {}  # the primary comparison's answers
    greedy: dict[str, list[Generation]] = {}
    kl: dict[str, Any] | None = None
    log(f"evaluating {len(prompts)} prompts: answers from ppo, sft, base, {decoding.label}"
        f"{' and greedy' if greedy_too else ''} (max_new_tokens={settings.max_new_tokens})")

    prompts_truncated: dict[str, int] = {}

    def answer(name: str, model, tokenizer, kl_samples: bool = False) -> SampledAnswers | None:
        """The model's answers for the comparison (and greedy ones); with `kl_samples`, PPO's samples at T=1."""
        budget = prompt_budget(context_length(model.config), settings.max_new_tokens)
        prompts_truncated[name] = count_over_budget(tokenizer, prompts, budget)
        if prompts_truncated[name]:
            log(f"{prompts_truncated[name]} of {len(prompts)} prompts exceed {name}'s {budget} prompt tokens "
                f"(context window minus max_new_tokens={settings.max_new_tokens}); they are cut from the left")
        if sampled:
            samples = sample_answers(model, tokenizer, prompts, decoding.samples_per_prompt, settings.temperature,
                                     settings.max_new_tokens, settings.batch_size, settings.seed,
                                     with_logprobs=kl_samples and settings.temperature == 1.0)
            generations[name] = samples.generations
        if not sampled or greedy_too:
            (generations if not sampled else greedy)[name] = generate(
                model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens, temperature=0.0,
                batch_size=settings.batch_size, seed=settings.seed,
            )
        if not kl_samples:
            return None
        if sampled and settings.temperature == 1.0:
            return samples  # the comparison's own samples are draws from PPO: they serve the KL too
        log(f"sampling {settings.kl_samples_per_prompt} PPO answers per prompt at temperature 1 for KL(ppo || sft)")
        return sample_answers(model, tokenizer, prompts, settings.kl_samples_per_prompt, 1.0, settings.max_new_tokens,
                              settings.batch_size, settings.seed, with_logprobs=True)

    # One bar for the stage, one unit per phase: the three models' answers, scoring, judging.
    bar = stage_progress(5, "evaluation_report", unit="phase")
    # PPO first: its samples for the KL are scored under SFT next, so only one policy is loaded at a time.
    bar.set_postfix_str("ppo answers")
    ppo, ppo_tokenizer = load_causal_lm(model_dirs["ppo"], choice)
    ppo_samples = answer("ppo", ppo, ppo_tokenizer, kl_samples=True)
    del ppo
    _free_memory()
    bar.update(1)
    bar.set_postfix_str("sft answers")
    sft, sft_tokenizer = load_causal_lm(model_dirs["sft"], choice)
    answer("sft", sft, sft_tokenizer)
    if _same_vocabulary(ppo_tokenizer, sft_tokenizer):
        kl = kl_to_reference(ppo_samples, sft)
    else:
        log("PPO and SFT tokenizers differ: KL(ppo || sft) is not computed")
    del sft, ppo_samples
    _free_memory()
    bar.update(1)
    bar.set_postfix_str("base answers")
    base, base_tokenizer = load_causal_lm(model_dirs["base"], choice)
    answer("base", base, base_tokenizer)
    del base
    _free_memory()
    bar.update(1)
    bar.set_postfix_str("scoring")

    log("scoring every answer with the reward model, the rule checker and the concept match")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward_tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(
        reward_dir, dtype=choice.dtype, use_safetensors=True,
    ).to(choice.device)
    rm = (reward, reward_tokenizer)
    scored = {"comparison": _score_all(generations, prompt_records, decoding.samples_per_prompt, rm, settings)}
    if greedy:
        scored["greedy"] = _score_all(greedy, prompt_records, 1, rm, settings)
    del reward, rm
    _free_memory()

    bar.update(1)
    bar.set_postfix_str("judging")
    log(f"pairwise judging with {judge.name!r}")
    judged = _judge_all(judge, scored["comparison"], settings)
    bar.update(1)
    bar.close()
    greedy_result = None
    if greedy:
        greedy_result = summarise(scored["greedy"], _judge_all(judge, scored["greedy"], settings), None, judge.name, settings)
    result = summarise(scored["comparison"], judged, kl, judge.name, settings, decoding, greedy_result)
    return dataclasses.replace(result, prompts_truncated=prompts_truncated)


def _score_all(generations: Mapping[str, Sequence[Generation]], prompt_records: Sequence[Mapping[str, Any]],
               samples_per_prompt: int, rm, settings: EvaluationSettings) -> dict[str, list[Answer]]:
    """Every model's answers with the RM score, the checker's verdict, the task type and the concept match."""
    records = [r for r in prompt_records for _ in range(samples_per_prompt)]
    answers: dict[str, list[Answer]] = {}
    for name in MODELS:
        responses = [g.response for g in generations[name]]
        scores = score(*rm, [r["prompt"] for r in records], responses, batch_size=settings.batch_size)
        answers[name] = []
        for generation, value, record in zip(generations[name], scores, records):
            task = record.get("task") if isinstance(record.get("task"), dict) else None
            answers[name].append(Answer.scored(
                generation, value,
                check_answer(task, generation.response) if task is not None else None,
                task_type=task.get("type") if task is not None else None,
                concept_matched=concept_matched(record, generation.response),
            ))
    return answers


def _judge_all(judge: PairwiseJudge, answers: Mapping[str, Sequence[Answer]], settings: EvaluationSettings):
    prompts = [a.prompt for a in answers["ppo"]]
    return {
        pair_key(x, y): judge_pairs(
            judge, prompts, [a.response for a in answers[x]], [a.response for a in answers[y]], settings.seed + index,
        )
        for index, (x, y) in enumerate(PAIRS)
    }
