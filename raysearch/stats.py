"""Confidence intervals for the accuracies the results report: an accuracy on n test images is
a binomial proportion, given with its Wilson score interval (good at small n and near 0 or 1,
where the normal approximation leaves [0, 1] or collapses to a point)."""
from __future__ import annotations

import math

def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (low, high) of a proportion with ``successes`` out of ``n``
    trials, at the normal quantile ``z`` (1.96: 95%). Raises ValueError for n < 1 or
    successes outside [0, n]."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the ends: 0 successes cannot have a lower bound above 0 (float noise aside)
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def successes_of(accuracy: float, n: int) -> int:
    """The count of correct images behind an ``accuracy`` measured on ``n`` images."""
    return int(round(accuracy * n))
