"""Confidence intervals for the accuracies the results report: an accuracy on n test images is
a binomial proportion, given with its Wilson score interval (good at small n and near 0 or 1,
where the normal approximation leaves [0, 1] or collapses to a point).

A randomized predictor's accuracy is per-call: each image scores the fraction of k fresh calls
that answered correctly, so ``accuracy · n`` need not be a whole number. It is used as it is,
not rounded: every per-image score lies in [0, 1] with the set's mean p, so its variance is at
most p(1 − p) and the binomial interval on n images stays valid (conservative) for the mean of
such fractions."""
from __future__ import annotations

import math
import numbers

Z95 = 1.96  # normal quantile of a two-sided 95% interval


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (low, high) of a proportion with ``successes`` out of ``n``
    trials, at the normal quantile ``z`` (1.96: 95%). ``successes`` may be fractional (a
    per-call accuracy times n, see the module's doc). Raises ValueError for n < 1 or
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


def accuracy_interval(accuracy: float | None, n: float | None, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval of an ``accuracy`` (a fraction) measured on ``n`` images, from
    ``accuracy · n`` successes, not rounded; (NaN, NaN) where the accuracy or n is missing
    (None, NaN or not a number) or n < 1. An accuracy a hair outside [0, 1] from float noise is clipped."""
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (accuracy, n)):
        return math.nan, math.nan
    accuracy, n = float(accuracy), float(n)
    if not (math.isfinite(accuracy) and math.isfinite(n)) or n < 1:
        return math.nan, math.nan
    return wilson(min(max(accuracy * n, 0.0), n), n, z)


def successes_of(accuracy: float, n: int) -> int:
    """The count of correct images behind an ``accuracy`` measured on ``n`` images (rounded:
    for a per-call accuracy this is the nearest whole count, not the measured one)."""
    return int(round(accuracy * n))


def count_limit(n: int, base_rate: float, z: float = Z95) -> float:
    """The most images out of ``n`` that show a sign at a true rate of ``base_rate`` and still
    count as noise: n·p + z·√(n·p·(1 − p)). A count above it is one whose Wilson interval
    (at the same ``z``) lies wholly above ``base_rate``: the Wilson interval is the inversion of
    this score test, so the limit and the intervals the results report say the same thing.
    A base rate of 0 gives 0: any count fires."""
    if n < 0 or not 0 <= base_rate <= 1:
        raise ValueError(f"need n >= 0 and a base rate in [0, 1], got n={n}, base_rate={base_rate}")
    return n * base_rate + z * math.sqrt(n * base_rate * (1 - base_rate))
