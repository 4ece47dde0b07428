"""How much answer length alone predicts the preference label.

A reward model trained on pairs where the chosen answer is usually the longer one learns "longer is
better", and PPO then optimises verbosity. Two measures, each against a bound:

- `fraction_chosen_longer`: among pairs whose answers differ in length (characters), the share
  whose chosen answer is the longer; 0.5 means length says nothing about the label.
- `length_label_correlation`: the Pearson correlation between the label "answer A is chosen" and
  the log length ratio log(len A / len B), over every pair presented in both orders. Taking both
  orders makes it a property of the data, not of a random shuffle; it reduces to
  mean(d) / sqrt(mean(d^2)) with d = log(len chosen / len rejected).

Both are symmetric: a set where the shorter answer always wins teaches brevity as a shortcut just
as surely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LengthBiasSettings(BaseModel):
    """Bounds of the length-bias gate; the `length_bias` check's config extends this."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_fraction_chosen_longer: float = Field(
        0.75, gt=0.5, le=1, description="fail when more than this share (or less than 1 minus it) of pairs prefer the longer answer"
    )
    max_abs_length_label_correlation: float = Field(
        0.5, gt=0, le=1, description="fail when |corr(label, log length ratio)| exceeds this"
    )


def measure_length_bias(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not pairs:
        raise ValueError("no preference pairs to measure")
    log_ratios = [math.log(max(len(p["chosen"]), 1) / max(len(p["rejected"]), 1)) for p in pairs]
    unequal = [d for d in log_ratios if d != 0]
    longer = sum(d > 0 for d in unequal)
    rms = math.sqrt(sum(d * d for d in log_ratios) / len(log_ratios))
    return {
        "n_pairs": len(pairs),
        "n_equal_length": len(pairs) - len(unequal),
        "fraction_chosen_longer": longer / len(unequal) if unequal else 0.5,
        "length_label_correlation": (sum(log_ratios) / len(log_ratios)) / rms if rms > 0 else 0.0,
        "mean_chosen_chars": sum(len(p["chosen"]) for p in pairs) / len(pairs),
        "mean_rejected_chars": sum(len(p["rejected"]) for p in pairs) / len(pairs),
    }


def length_bias_violations(stats: dict[str, Any], settings: LengthBiasSettings) -> list[str]:
    """What is out of bounds, in words; empty when the data passes."""
    problems = []
    fraction = stats["fraction_chosen_longer"]
    bound = settings.max_fraction_chosen_longer
    if fraction > bound or fraction < 1 - bound:
        problems.append(f"fraction_chosen_longer={fraction:.3f} is outside [{1 - bound:.3f}, {bound:.3f}]")
    correlation = stats["length_label_correlation"]
    if abs(correlation) > settings.max_abs_length_label_correlation:
        problems.append(
            f"|length_label_correlation|={abs(correlation):.3f} exceeds {settings.max_abs_length_label_correlation:.3f}"
        )
    return problems


def most_length_biased_pairs(pairs: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The pairs where the chosen answer is longest relative to the rejected one (rows from 1)."""
    ranked = sorted(
        range(len(pairs)), key=lambda i: len(pairs[i]["rejected"]) / max(len(pairs[i]["chosen"]), 1)
    )
    return [
        {"row": i + 1, "chosen_chars": len(pairs[i]["chosen"]), "rejected_chars": len(pairs[i]["rejected"]),
         "prompt": pairs[i]["prompt"], "chosen": pairs[i]["chosen"], "rejected": pairs[i]["rejected"]}
        for i in ranked[:limit]
    ]
