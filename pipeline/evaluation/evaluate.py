"""Evaluation of base vs SFT vs PPO on held-out prompts: the numbers behind `evaluation_report`.

Every model answers every evaluation prompt (greedy by default). Each answer gets the reward
model's score, the rule checker's verdict when the prompt is a verifiable task, and format flags.
From those: per-model means with 95% percentile-bootstrap intervals (resampling prompts), pairwise
win rates by three judges (reward model, rule checker, a pluggable pairwise judge), the KL of PPO
to SFT on PPO's own samples, and spot checks for reward hacking.

Only one policy is in memory at a time, so the report also runs on models that do not fit twice.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.training.device import torch_cpu_threads
from pipeline.training.generation import load_causal_lm
from pipeline.evaluation.judges import PairwiseJudge, judge_pairs
from pipeline.data.tasks import check_answer
from pipeline.evaluation.report import MODELS
from pipeline.settings import EvaluationSettings

logger = logging.getLogger(__name__)

# (x, y): "x_vs_y" is the rate at which x's answer beats y's (ties count half).
PAIRS = (("ppo", "sft"), ("sft", "base"), ("ppo", "base"))
JUDGE_KEYS = ("reward_model", "rule_checker", "pairwise_judge")
CI_LEVEL = 0.95


@dataclass
class Answer:
    prompt: str
    response: str
    n_tokens: int
    n_chars: int
    ended_with_eos: bool
    echoed_role_marker: bool
    rm_score: float = math.nan
    checker_passed: bool | None = None  # None: not a verifiable prompt

    @property
    def well_formatted(self) -> bool:
        return self.ended_with_eos and not self.echoed_role_marker


# --- statistics --------------------------------------------------------------------------------


def bootstrap_mean_ci(values: Sequence[float], n_resamples: int, seed: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean: resample the values with replacement."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def mean_with_ci(values: Sequence[float], n_resamples: int, seed: int) -> tuple[float | None, list[float] | None]:
    if len(values) == 0:
        return None, None
    return float(np.mean(values)), list(bootstrap_mean_ci(values, n_resamples, seed))


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when it is undefined (fewer than 3 points or a constant side)."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def model_metrics(answers: Sequence[Answer], n_resamples: int, seed: int) -> dict[str, Any]:
    """Per-model numbers: RM score and checker accuracy with intervals, format adherence, lengths."""
    scores = [a.rm_score for a in answers]
    checked = [float(a.checker_passed) for a in answers if a.checker_passed is not None]
    formatted = [float(a.well_formatted) for a in answers]
    lengths = np.asarray([a.n_tokens for a in answers], dtype=float)
    rm_mean, rm_ci = mean_with_ci(scores, n_resamples, seed)
    accuracy, accuracy_ci = mean_with_ci(checked, n_resamples, seed + 1)
    adherence, adherence_ci = mean_with_ci(formatted, n_resamples, seed + 2)
    return {
        "n_answers": len(answers),
        "rm_score_mean": rm_mean,
        "rm_score_ci95": rm_ci,
        "checker_accuracy": accuracy,
        "checker_accuracy_ci95": accuracy_ci,
        "n_verifiable": len(checked),
        "format_adherence": adherence,
        "format_adherence_ci95": adherence_ci,
        "ends_with_eos_rate": float(np.mean([a.ended_with_eos for a in answers])),
        "role_marker_rate": float(np.mean([a.echoed_role_marker for a in answers])),
        "mean_length": float(lengths.mean()),
        "length_tokens": {
            "p10": float(np.percentile(lengths, 10)),
            "median": float(np.median(lengths)),
            "p90": float(np.percentile(lengths, 90)),
            "max": float(lengths.max()),
        },
        "mean_length_chars": float(np.mean([a.n_chars for a in answers])),
        "rm_length_correlation": correlation(scores, lengths),
    }


def win_rate(outcomes: Sequence[float], n_resamples: int, seed: int) -> dict[str, Any]:
    """Win rate of x over y from per-prompt outcomes (1 win, 0.5 tie, 0 loss), with its interval."""
    rate, ci = mean_with_ci(outcomes, n_resamples, seed)
    return {
        "rate": rate,
        "ci95": ci,
        "n": len(outcomes),
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
    }


def rm_outcomes(x: Sequence[Answer], y: Sequence[Answer], tie_margin: float) -> list[float]:
    return [
        0.5 if abs(a.rm_score - b.rm_score) <= tie_margin else float(a.rm_score > b.rm_score)
        for a, b in zip(x, y)
    ]


def checker_outcomes(x: Sequence[Answer], y: Sequence[Answer]) -> list[float]:
    """Only verifiable prompts: a correct answer beats a wrong one; equal verdicts tie."""
    return [
        0.5 if a.checker_passed == b.checker_passed else float(bool(a.checker_passed))
        for a, b in zip(x, y) if a.checker_passed is not None
    ]


# --- KL of PPO to SFT --------------------------------------------------------------------------


@dataclass
class PolicySamples:
    """PPO's sampled responses for the KL estimate, with their summed log-probs under PPO."""

    batches: list[Any]  # pipeline.ppo.rollout.Rollout per prompt batch
    policy_logprob_sums: list[torch.Tensor]


@torch.inference_mode()
def sample_for_kl(policy, tokenizer, prompts: Sequence[str], samples_per_prompt: int, max_new_tokens: int,
                  batch_size: int, seed: int) -> PolicySamples:
    from pipeline.ppo.rollout import encode_prompts, sample_responses

    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    batches, sums = [], []
    for start in range(0, len(repeated), batch_size):
        encoded = encode_prompts(tokenizer, repeated[start : start + batch_size], device)
        rollout = sample_responses(policy, encoded, max_new_tokens, 1.0, tokenizer.eos_token_id,
                                   tokenizer.pad_token_id, generator)
        batches.append(rollout)
        sums.append(sequence_logprob_sums(policy, rollout))
    return PolicySamples(batches, sums)


@torch.inference_mode()
def sequence_logprob_sums(model, rollout) -> torch.Tensor:
    """log pi(y | x) of each sampled response: per-token log-probs summed over real response tokens."""
    from pipeline.ppo.rollout import pack_rollout, response_logprobs_packed

    packed = pack_rollout(rollout)
    return packed.to_padded(response_logprobs_packed(model, packed)).sum(1).cpu()


@torch.inference_mode()
def kl_to_reference(samples: PolicySamples, reference) -> dict[str, Any]:
    """KL(pi_ppo || pi_sft) estimated on PPO's samples: mean over samples of log pi - log pi_ref (nats)."""
    per_sequence, n_tokens = [], 0
    for rollout, policy_sums in zip(samples.batches, samples.policy_logprob_sums):
        reference_sums = sequence_logprob_sums(reference, rollout)
        per_sequence.extend((policy_sums - reference_sums).tolist())
        n_tokens += int(rollout.response_mask.sum())
    return {"per_sequence": per_sequence, "n_tokens": n_tokens}


# --- running the models ------------------------------------------------------------------------


def _free_memory() -> None:
    """Call after dropping the last reference to a model, so the next one has the memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def answer_prompts(model, tokenizer, prompts: Sequence[str], settings: EvaluationSettings, desc: str) -> list[Answer]:
    from pipeline.training.generation import generate

    generations = generate(
        model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
        batch_size=settings.batch_size, seed=settings.seed, progress_desc=desc,
    )
    return [
        Answer(g.prompt, g.response, g.n_tokens, len(g.response), g.ended_with_eos, g.echoed_role_marker)
        for g in generations
    ]


def _same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def evaluate(
    model_dirs: Mapping[str, Path],
    reward_dir: Path,
    prompt_records: Sequence[dict[str, Any]],
    settings: EvaluationSettings,
    judge: PairwiseJudge,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """The evaluation result (the content of eval.json plus per-answer rows): see module docstring."""
    with torch_cpu_threads(settings.cpu_threads):
        return _evaluate(model_dirs, reward_dir, prompt_records, settings, judge, log)


def _evaluate(model_dirs, reward_dir, prompt_records, settings, judge, log) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.training.device import select_device
    from pipeline.training.reward_model import score

    missing = [name for name in MODELS if name not in model_dirs]
    if missing:
        raise ValueError(f"evaluate needs model directories for {MODELS}; missing {missing}")
    if not prompt_records:
        raise ValueError("evaluate needs at least one evaluation prompt")
    prompts = [r["prompt"] for r in prompt_records]
    tasks = [r.get("task") if isinstance(r.get("task"), dict) else None for r in prompt_records]
    choice = select_device(settings.device)
    answers: dict[str, list[Answer]] = {}
    kl: dict[str, Any] | None = None

    # PPO first: its samples for the KL are scored under SFT next, so only one policy is loaded at a time.
    log(f"evaluating {len(prompts)} prompts: answers from ppo, sft, base (max_new_tokens={settings.max_new_tokens})")
    ppo, ppo_tokenizer = load_causal_lm(model_dirs["ppo"], choice)
    answers["ppo"] = answer_prompts(ppo, ppo_tokenizer, prompts, settings, "ppo answers")
    log(f"sampling {settings.kl_samples_per_prompt} PPO responses per prompt for KL(ppo || sft)")
    samples = sample_for_kl(ppo, ppo_tokenizer, prompts, settings.kl_samples_per_prompt, settings.max_new_tokens,
                            settings.batch_size, settings.seed)
    del ppo
    _free_memory()
    sft, sft_tokenizer = load_causal_lm(model_dirs["sft"], choice)
    answers["sft"] = answer_prompts(sft, sft_tokenizer, prompts, settings, "sft answers")
    if _same_vocabulary(ppo_tokenizer, sft_tokenizer):
        kl = kl_to_reference(samples, sft)
    else:
        log("PPO and SFT tokenizers differ: KL(ppo || sft) is not computed")
    del sft, samples
    _free_memory()
    base, base_tokenizer = load_causal_lm(model_dirs["base"], choice)
    answers["base"] = answer_prompts(base, base_tokenizer, prompts, settings, "base answers")
    del base
    _free_memory()

    log("scoring every answer with the reward model and the rule checker")
    reward_tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, dtype=choice.dtype, use_safetensors=True).to(choice.device)
    for name in MODELS:
        scores = score(reward, reward_tokenizer, prompts, [a.response for a in answers[name]], batch_size=settings.batch_size)
        for answer, value, task in zip(answers[name], scores, tasks):
            answer.rm_score = value
            answer.checker_passed = check_answer(task, answer.response) if task is not None else None
    del reward
    _free_memory()

    log(f"pairwise judging with {judge.name!r}")
    judged = {}
    for index, (x, y) in enumerate(PAIRS):
        judged[f"{x}_vs_{y}"] = judge_pairs(
            judge, prompts, [a.response for a in answers[x]], [a.response for a in answers[y]], settings.seed + index,
        )

    return summarise(answers, judged, kl, judge.name, settings)


def summarise(
    answers: Mapping[str, Sequence[Answer]],
    judged: Mapping[str, Sequence[Any]],
    kl: Mapping[str, Any] | None,
    judge_name: str,
    settings: EvaluationSettings,
) -> dict[str, Any]:
    """Turn answers, judgements and KL samples into the report's numbers (no models involved)."""
    n_boot, seed = settings.n_bootstrap, settings.seed
    models = {name: model_metrics(answers[name], n_boot, seed) for name in MODELS}
    win_rates: dict[str, dict[str, Any]] = {}
    for index, (x, y) in enumerate(PAIRS):
        key = f"{x}_vs_{y}"
        pairs = judged[key]
        position_a = [p.verdict.winner == "A" for p in pairs if p.verdict.winner != "tie"]
        win_rates[key] = {
            "reward_model": win_rate(rm_outcomes(answers[x], answers[y], settings.rm_tie_margin), n_boot, seed + 10 + index),
            "rule_checker": win_rate(checker_outcomes(answers[x], answers[y]), n_boot, seed + 20 + index),
            "pairwise_judge": {
                **win_rate([p.outcome for p in pairs], n_boot, seed + 30 + index),
                "judge": judge_name,
                "x_shown_first_fraction": float(np.mean([p.x_shown_as == "A" for p in pairs])),
                # A judge without position bias picks A in about half of its decisive verdicts.
                "a_picked_fraction": float(np.mean(position_a)) if position_a else None,
            },
        }
    result: dict[str, Any] = {
        "n_prompts": len(answers["ppo"]),
        "n_verifiable": models["ppo"]["n_verifiable"],
        "judge": judge_name,
        "models": models,
        "win_rates": win_rates,
        "kl_ppo_vs_sft": None,
        "kl_ppo_vs_sft_ci95": None,
        "kl_ppo_vs_sft_per_token": None,
        "spot_checks": spot_checks(answers, settings.n_spot_checks),
        "judgements": [
            {"pair": key, "prompt": p.prompt, "x_shown_as": p.x_shown_as, "winner_position": p.verdict.winner,
             "winner_model": {1.0: x, 0.0: y}.get(p.outcome, "tie"), "outcome_for_x": p.outcome, "reason": p.verdict.reason}
            for (x, y) in PAIRS for key in [f"{x}_vs_{y}"] for p in judged[key]
        ],
        "answers": {name: [asdict(a) for a in answers[name]] for name in MODELS},
    }
    if kl is not None and kl["per_sequence"]:
        mean, ci = mean_with_ci(kl["per_sequence"], n_boot, seed + 40)
        result.update({
            "kl_ppo_vs_sft": mean,
            "kl_ppo_vs_sft_ci95": ci,
            "kl_ppo_vs_sft_per_token": sum(kl["per_sequence"]) / max(1, kl["n_tokens"]),
            "kl_n_samples": len(kl["per_sequence"]),
        })
    return result


# --- spot checks -------------------------------------------------------------------------------


def _checker_label(answer: Answer) -> str:
    return "n/a" if answer.checker_passed is None else ("pass" if answer.checker_passed else "FAIL")


def spot_checks(answers: Mapping[str, Sequence[Answer]], n: int) -> dict[str, list[dict[str, Any]]]:
    """The highest-reward PPO answers, and where the reward model and the rule checker disagree most.

    A disagreement is a pair of answers to one verifiable prompt where the checker passes one and
    fails the other but the reward model scores the failing one higher: the larger that margin,
    the likelier the policy found something the RM likes that is not correct (reward hacking).
    Answers that fail the checker yet score above the median passing answer are listed too.
    """
    top_ppo = sorted(answers["ppo"], key=lambda a: a.rm_score, reverse=True)[:n]
    disagreements = []
    for x, y in PAIRS:
        for a, b in zip(answers[x], answers[y]):
            if a.checker_passed is None or a.checker_passed == b.checker_passed:
                continue
            wrong, right, wrong_model, right_model = (b, a, y, x) if a.checker_passed else (a, b, x, y)
            margin = wrong.rm_score - right.rm_score
            if margin > 0:
                disagreements.append({
                    "prompt": a.prompt, "rm_margin": margin,
                    "rm_preferred_model": wrong_model, "rm_preferred_answer": wrong.response,
                    "checker_passed_model": right_model, "checker_passed_answer": right.response,
                })
    disagreements.sort(key=lambda row: row["rm_margin"], reverse=True)
    passing = [a.rm_score for name in MODELS for a in answers[name] if a.checker_passed]
    threshold = float(np.median(passing)) if passing else math.inf
    wrong_but_liked = sorted(
        ({"model": name, "prompt": a.prompt, "response": a.response, "rm_score": a.rm_score, "n_tokens": a.n_tokens}
         for name in MODELS for a in answers[name] if a.checker_passed is False and a.rm_score > threshold),
        key=lambda row: row["rm_score"], reverse=True,
    )
    return {
        "top_ppo_by_rm": [
            {"prompt": a.prompt, "response": a.response, "rm_score": a.rm_score, "n_tokens": a.n_tokens,
             "checker": _checker_label(a), "well_formatted": a.well_formatted}
            for a in top_ppo
        ],
        "rm_checker_disagreements": disagreements[:n],
        "failed_but_high_rm": wrong_but_liked[:n],
    }
