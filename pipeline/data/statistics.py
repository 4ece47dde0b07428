"""Summary statistics of plain lists of numbers, with one convention for undefined values.

A mean of nothing is NaN (a float that stays a float in metrics files; JSON writers turn it into
null). A correlation that is not defined (fewer than three points, or one side constant) is None:
no number would be honest there, and a constant reward is not "uncorrelated with length".
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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
