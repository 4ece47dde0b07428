"""Gates on trained models: the reward model's held-out quality and PPO's drift from the SFT policy.

Both read numbers the training assets already write (`rm_eval.json`; `ppo_summary.json` and
`ppo_train_metrics.jsonl`), so a gate can be re-run on an old artifact without retraining.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RewardMarginSettings(BaseModel):
    """Thresholds of the reward-model gate; the `rm_margin` check's config extends this.

    Measured on the embedded default (400 pairs, 60 held out): accuracy 0.93, mean margin 4.1,
    reward/length correlation -0.06; the defaults leave a wide margin below that. The tiny test
    profile holds out 10 pairs (accuracy 0.6-0.7, margin 0.05), which says nothing either way:
    hence `min_held_out_pairs`, below which a failure warns instead of blocking.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_held_out_accuracy: float = Field(0.75, ge=0, le=1, description="share of held-out pairs where chosen outscores rejected")
    min_mean_margin: float = Field(1.0, description="mean of r(chosen) - r(rejected) on held-out pairs")
    max_abs_reward_length_correlation: float = Field(
        0.5, gt=0, le=1, description="|Pearson correlation of reward with response length| on held-out answers"
    )
    min_held_out_pairs: int = Field(
        30, ge=0, description="with fewer held-out pairs a failure is reported with WARN severity and does not block"
    )


def gate_severity(problems: list[str], severity: str, n_evidence: int | None, min_evidence: int, what: str) -> str:
    """WARN instead of the configured severity when the measurement rests on too few samples to block on.

    When a failure is downgraded, the reason goes first into `problems`.
    """
    if n_evidence is None or n_evidence >= min_evidence or severity == "WARN":
        return severity
    if problems:
        problems.insert(0, f"only {n_evidence} {what} (< {min_evidence}), so not blocking")
    return "WARN"


def reward_margin_violations(rm_eval: dict[str, Any], settings: RewardMarginSettings) -> list[str]:
    """What is out of bounds in `rm_eval.json`, in words; empty when the reward model passes."""
    problems = []
    accuracy = rm_eval["held_out_accuracy"]
    if not accuracy >= settings.min_held_out_accuracy:
        problems.append(f"held_out_accuracy={accuracy:.3f} is below {settings.min_held_out_accuracy:.3f}")
    margin = rm_eval["mean_margin"]
    if not margin >= settings.min_mean_margin:
        problems.append(f"mean_margin={margin:.3f} is below {settings.min_mean_margin:.3f}")
    correlation = rm_eval["reward_length_correlation"]
    if correlation is None:  # pipeline.data.statistics.pearson_correlation: constant rewards or lengths
        problems.append("reward_length_correlation is undefined (constant rewards or lengths, or fewer than 3 answers)")
    elif math.isnan(correlation) or abs(correlation) > settings.max_abs_reward_length_correlation:
        problems.append(
            f"|reward_length_correlation|={abs(correlation):.3f} exceeds {settings.max_abs_reward_length_correlation:.3f}"
        )
    return problems


class PpoGuardSettings(BaseModel):
    """Bounds of the PPO guard; the `ppo_guard` check's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_kl_to_sft: float | None = Field(
        None, gt=0, description="bound on the mean per-sequence KL(PPO || SFT); None uses the run's own kl_bound"
    )
    max_response_length_ratio: float = Field(
        2.0, gt=1, description="mean PPO response length over mean SFT response length (verbosity drift)"
    )
    min_response_length_ratio: float = Field(
        0.25, ge=0, lt=1, description="below this the policy has collapsed to (near) empty answers"
    )
    severity: Literal["ERROR", "WARN"] = Field(
        "ERROR", description="ERROR blocks evaluation_report (and refuses later runs); WARN only reports"
    )
    min_eval_answers: int = Field(
        32, ge=0, description="with fewer sampled evaluation answers a failure is reported with WARN severity"
    )


def ppo_guard_violations(summary: dict[str, Any], settings: PpoGuardSettings) -> list[str]:
    """What is out of bounds in the PPO summary (`kl_to_sft`, `kl_bound`, `response_length_ratio`)."""
    problems = []
    bound = kl_bound_for(summary, settings)
    kl = summary["kl_to_sft"]
    if math.isnan(kl) or kl > bound:
        problems.append(f"kl_to_sft={kl:.3f} exceeds the bound {bound:.3f}")
    ratio = summary["response_length_ratio"]
    if math.isnan(ratio) or ratio > settings.max_response_length_ratio:
        problems.append(f"response_length_ratio={ratio:.3f} exceeds {settings.max_response_length_ratio:.3f}")
    elif ratio < settings.min_response_length_ratio:
        problems.append(f"response_length_ratio={ratio:.3f} is below {settings.min_response_length_ratio:.3f}")
    return problems


def kl_bound_for(summary: dict[str, Any], settings: PpoGuardSettings) -> float:
    if settings.max_kl_to_sft is not None:
        return settings.max_kl_to_sft
    if summary.get("kl_bound") is None:
        raise ValueError("the PPO summary records no kl_bound; set max_kl_to_sft in the ppo_guard config")
    return float(summary["kl_bound"])


def steps_beyond_kl_bound(history: Sequence[dict[str, Any]], bound: float, limit: int) -> list[dict[str, Any]]:
    """The first training steps whose rollout KL exceeded the bound: where the drift started."""
    rows = [
        {"step": r.get("step"), "kl": r.get("kl"), "rm_score": r.get("rm_score"), "response_length": r.get("response_length")}
        for r in history
        if isinstance(r.get("kl"), (int, float)) and r["kl"] > bound
    ]
    return rows[:limit]
