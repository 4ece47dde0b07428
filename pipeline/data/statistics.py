"""Summary statistics of plain lists of numbers, with one convention for undefined values.

A mean of nothing is NaN (a float that stays a float in metrics files; JSON writers turn it into
null). A correlation that is not defined (fewer than three points, or one side constant) is None:
no number would be honest there, and a constant reward is not "uncorrelated with length".
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence


def mean_or_nan(values: Sequence[float]) -> float:
    return sum(values) / len(values) if len(values) else float("nan")


def pearson_correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation of paired values; None when undefined (fewer than 3 points or a constant side)."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) != len(ys):
        raise ValueError(f"pearson_correlation needs paired values, got {len(xs)} and {len(ys)}")
    n = len(xs)
    if n < 3:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    if var_x == 0 or var_y == 0:
        return None
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return cov / math.sqrt(var_x * var_y)


def within_group_correlation(xs: Sequence[float], ys: Sequence[float], groups: Sequence[Hashable]) -> float | None:
    """Pearson correlation of the values less their group's mean (the pooled within-group correlation).

    Two groups that differ in both means make a pooled correlation that neither group has (Simpson's
    paradox); this one compares each value only with its own group's. None when undefined.
    """
    if not len(xs) == len(ys) == len(groups):
        raise ValueError(f"within_group_correlation needs paired values, got {len(xs)}, {len(ys)} and {len(groups)} groups")
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    residual_x, residual_y = [0.0] * len(xs), [0.0] * len(ys)
    for indices in members.values():
        mean_x = sum(float(xs[i]) for i in indices) / len(indices)
        mean_y = sum(float(ys[i]) for i in indices) / len(indices)
        for i in indices:
            residual_x[i], residual_y[i] = float(xs[i]) - mean_x, float(ys[i]) - mean_y
    return pearson_correlation(residual_x, residual_y)
