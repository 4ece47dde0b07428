"""The evaluation's numbers from answers, judgements and KL samples: statistics only, no models.

Per-model means with 95% percentile-bootstrap intervals (resampling prompts), pairwise win rates
by three judges (reward model, rule checker, a pluggable pairwise judge), the checker-accuracy
difference of PPO and SFT, and spot checks for reward hacking; `summarise` puts them into an
`EvaluationResult`.

With several sampled answers per prompt, the answers to one prompt are not independent draws of
the evaluation, so every interval resamples prompts: each prompt's answers are averaged first
(answers come grouped, `samples_per_prompt` consecutive answers per prompt).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.data.statistics import pearson_correlation, within_group_correlation
from pipeline.data.tasks import extract_final_answer
from pipeline.evaluation.judges import JudgedPair
from pipeline.evaluation.result import (
    MODELS,
    PAIRS,
    AccuracyDifference,
    Answer,
    Decoding,
    EvaluationResult,
    JudgeWinRate,
    Judgement,
    KlEstimate,
    LengthQuantiles,
    ModelMetrics,
    PairWinRates,
    RightOverWrong,
    SpotChecks,
    TaskAccuracy,
    WinRate,
    pair_key,
)
from pipeline.settings import EvaluationSettings

CI_LEVEL = 0.95


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


def mean_with_ci(
    values: Sequence[float], n_resamples: int, seed: int, group_size: int = 1,
) -> tuple[float | None, list[float] | None]:
    """The mean and its bootstrap interval; `group_size` consecutive values (one prompt's answers) resample together."""
    if len(values) == 0:
        return None, None
    if len(values) % group_size:
        raise ValueError(f"{len(values)} values do not split into groups of {group_size} (answers per prompt)")
    per_prompt = np.asarray(values, dtype=float).reshape(-1, group_size).mean(axis=1)
    return float(np.mean(values)), list(bootstrap_mean_ci(per_prompt, n_resamples, seed))


def rm_right_over_wrong(answers: Sequence[Answer]) -> RightOverWrong:
    """How often the RM ranks a right stated result above a wrong one, over every (right, wrong) pair of the answers
    to verifiable prompts that state a result ("The answer is ..."); unfinished answers are left out."""
    right = np.asarray([a.rm_score for a in answers if a.checker_passed is True], dtype=float)
    wrong = np.asarray([a.rm_score for a in answers
                        if a.checker_passed is False and extract_final_answer(a.response) is not None], dtype=float)
    if right.size == 0 or wrong.size == 0:
        return RightOverWrong(rate=None, n_right=int(right.size), n_wrong=int(wrong.size))
    above = (right[:, None] > wrong[None, :]).mean() + 0.5 * (right[:, None] == wrong[None, :]).mean()
    return RightOverWrong(rate=float(above), n_right=int(right.size), n_wrong=int(wrong.size))


def model_metrics(answers: Sequence[Answer], n_resamples: int, seed: int, group_size: int = 1) -> ModelMetrics:
    """Per-model numbers: RM score, checker accuracy (overall and per task type) and concept match with
    intervals, format adherence, lengths, and how well the RM ranks right results above wrong ones."""
    scores = [a.rm_score for a in answers]
    checked = [float(a.checker_passed) for a in answers if a.checker_passed is not None]
    formatted = [float(a.well_formatted) for a in answers]
    on_topic = [float(a.concept_matched) for a in answers if a.concept_matched is not None]
    lengths = np.asarray([a.n_tokens for a in answers], dtype=float)
    rm_mean, rm_ci = mean_with_ci(scores, n_resamples, seed, group_size)
    accuracy, accuracy_ci = mean_with_ci(checked, n_resamples, seed + 1, group_size)
    adherence, adherence_ci = mean_with_ci(formatted, n_resamples, seed + 2, group_size)
    concept_match, concept_match_ci = mean_with_ci(on_topic, n_resamples, seed + 3, group_size)
    by_task: dict[str, list[bool]] = {}
    for answer in answers:
        if answer.checker_passed is not None and answer.task_type:
            by_task.setdefault(answer.task_type, []).append(answer.checker_passed)
    return ModelMetrics(
        n_answers=len(answers),
        rm_score_mean=rm_mean,
        rm_score_ci95=rm_ci,
        checker_accuracy=accuracy,
        checker_accuracy_ci95=accuracy_ci,
        n_verifiable=len(checked),
        format_adherence=adherence,
        format_adherence_ci95=adherence_ci,
        ends_with_eos_rate=float(np.mean([a.ended_with_eos for a in answers])),
        role_marker_rate=float(np.mean([a.echoed_role_marker for a in answers])),
        mean_length=float(lengths.mean()),
        length_tokens=LengthQuantiles(
            p10=float(np.percentile(lengths, 10)),
            median=float(np.median(lengths)),
            p90=float(np.percentile(lengths, 90)),
            max=float(lengths.max()),
        ),
        mean_length_chars=float(np.mean([a.n_chars for a in answers])),
        rm_length_correlation=pearson_correlation(scores, lengths),
        concept_match_rate=concept_match,
        concept_match_rate_ci95=concept_match_ci,
        n_explanations=len(on_topic) // group_size,
        checker_accuracy_by_task={
            task: TaskAccuracy(accuracy=float(np.mean(passed)), n=len(passed)) for task, passed in sorted(by_task.items())
        },
        rm_right_over_wrong=rm_right_over_wrong(answers),
        rm_length_correlation_within_kind=within_group_correlation(
            scores, lengths, [a.task_type or "explanation" for a in answers]),
    )


def _counts(outcomes: Sequence[float]) -> dict[str, int]:
    return {
        "n": len(outcomes),
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
    }


def win_rate(outcomes: Sequence[float], n_resamples: int, seed: int, group_size: int = 1) -> WinRate:
    """Win rate of x over y from per-answer outcomes (1 win, 0.5 tie, 0 loss), with its interval."""
    rate, ci = mean_with_ci(outcomes, n_resamples, seed, group_size)
    return WinRate(rate=rate, ci95=ci, **_counts(outcomes))


def judge_win_rate(
    pairs: Sequence[JudgedPair], judge_name: str, n_resamples: int, seed: int, group_size: int = 1,
) -> JudgeWinRate:
    """The pairwise judge's win rate, and how often X was shown first and A was picked (position bias)."""
    outcomes = [p.outcome for p in pairs]
    rate, ci = mean_with_ci(outcomes, n_resamples, seed, group_size)
    position_a = [p.verdict.winner == "A" for p in pairs if p.verdict.winner != "tie"]
    return JudgeWinRate(
        rate=rate, ci95=ci, **_counts(outcomes),
        judge=judge_name,
        x_shown_first_fraction=float(np.mean([p.x_shown_as == "A" for p in pairs])),
        a_picked_fraction=float(np.mean(position_a)) if position_a else None,
    )


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


def checker_accuracy_difference(
    x: Sequence[Answer], y: Sequence[Answer], n_resamples: int, seed: int, group_size: int = 1,
) -> AccuracyDifference:
    """Accuracy of x minus accuracy of y on the verifiable prompts, each answer paired with the other
    model's answer to the same prompt (same sample index); the interval resamples prompts."""
    differences = [
        float(bool(a.checker_passed)) - float(bool(b.checker_passed))
        for a, b in zip(x, y) if a.checker_passed is not None
    ]
    difference, ci = mean_with_ci(differences, n_resamples, seed, group_size)
    return AccuracyDifference(difference=difference, ci95=ci, n_prompts=len(differences) // group_size)


def kl_estimate(kl: Mapping[str, Any] | None, n_resamples: int, seed: int) -> KlEstimate | None:
    """The mean KL per answer with its interval, from `evaluate.kl_to_reference`'s per-sequence values."""
    if kl is None or not kl["per_sequence"]:
        return None
    mean, ci = mean_with_ci(kl["per_sequence"], n_resamples, seed)
    return KlEstimate(
        mean=mean, ci95=ci, per_token=sum(kl["per_sequence"]) / max(1, kl["n_tokens"]), n_samples=len(kl["per_sequence"]),
    )


def summarise(
    answers: Mapping[str, Sequence[Answer]],
    judged: Mapping[str, Sequence[JudgedPair]],
    kl: Mapping[str, Any] | None,
    judge_name: str,
    settings: EvaluationSettings,
    decoding: Decoding | None = None,
    greedy: EvaluationResult | None = None,
) -> EvaluationResult:
    """Turn answers, judgements and KL samples into the report's numbers (no models involved).

    `answers[name]` holds `decoding.samples_per_prompt` consecutive answers per prompt, the same
    prompts in the same order for every model."""
    decoding = decoding or Decoding(temperature=0.0, samples_per_prompt=1)
    n_boot, seed, k = settings.n_bootstrap, settings.seed, decoding.samples_per_prompt
    models = {name: model_metrics(answers[name], n_boot, seed, k) for name in MODELS}
    win_rates: dict[str, PairWinRates] = {}
    differences: dict[str, AccuracyDifference] = {}
    for index, (x, y) in enumerate(PAIRS):
        key = pair_key(x, y)
        win_rates[key] = PairWinRates(
            reward_model=win_rate(rm_outcomes(answers[x], answers[y], settings.rm_tie_margin), n_boot, seed + 10 + index, k),
            rule_checker=win_rate(checker_outcomes(answers[x], answers[y]), n_boot, seed + 20 + index, k),
            pairwise_judge=judge_win_rate(judged[key], judge_name, n_boot, seed + 30 + index, k),
        )
        differences[key] = checker_accuracy_difference(answers[x], answers[y], n_boot, seed + 50 + index, k)
    judgements = [
        Judgement(
            pair=key, prompt=p.prompt, x_shown_as=p.x_shown_as, winner_position=p.verdict.winner,
            winner_model={1.0: x, 0.0: y}.get(p.outcome, "tie"), outcome_for_x=p.outcome, reason=p.verdict.reason,
        )
        for (x, y) in PAIRS for key in [pair_key(x, y)] for p in judged[key]
    ]
    return EvaluationResult(
        n_prompts=len(answers["ppo"]) // k,
        n_verifiable=models["ppo"].n_verifiable // k,
        judge=judge_name,
        models=models,
        win_rates=win_rates,
        kl=kl_estimate(kl, n_boot, seed + 40),
        spot_checks=spot_checks(answers, settings.n_spot_checks),
        judgements=judgements,
        answers={name: list(answers[name]) for name in MODELS},
        decoding=decoding,
        checker_accuracy_difference=differences,
        greedy=greedy,
    )


# --- spot checks -------------------------------------------------------------------------------


def _checker_label(answer: Answer) -> str:
    return "n/a" if answer.checker_passed is None else ("pass" if answer.checker_passed else "FAIL")


def spot_checks(answers: Mapping[str, Sequence[Answer]], n: int) -> SpotChecks:
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
    return SpotChecks(
        top_ppo_by_rm=[
            {"prompt": a.prompt, "response": a.response, "rm_score": a.rm_score, "n_tokens": a.n_tokens,
             "checker": _checker_label(a), "well_formatted": a.well_formatted}
            for a in top_ppo
        ],
        rm_checker_disagreements=disagreements[:n],
        failed_but_high_rm=wrong_but_liked[:n],
    )
