"""Wilson score intervals (raysearch.stats) against published and closed-form values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch import stats
from raysearch.stats import accuracy_interval, successes_of, wilson


@pytest.mark.parametrize("successes, n, low, high", [
    (5, 10, 0.2366, 0.7634),  # p = 0.5: symmetric about 0.5
    (8, 10, 0.4902, 0.9433),  # statsmodels proportion_confint(8, 10, method="wilson")
    (81, 263, 0.2553, 0.3662),  # statsmodels proportion_confint(81, 263, method="wilson")
    (0, 10, 0.0, 0.2775),  # no success: [0, z²/(n+z²)]
    (10, 10, 0.7225, 1.0),
])
def test_wilson_matches_known_intervals(successes, n, low, high):
    assert wilson(successes, n) == pytest.approx((low, high), abs=1e-4)


def test_a_wider_quantile_gives_a_wider_interval_around_the_same_centre():
    narrow, wide = wilson(30, 100, z=1.0), wilson(30, 100, z=2.576)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]


@pytest.mark.parametrize("successes, n", [(1, 0), (-1, 10), (11, 10)])
def test_impossible_counts_are_refused(successes, n):
    with pytest.raises(ValueError):
        wilson(successes, n)


def test_successes_of_an_accuracy():
    assert successes_of(0.95, 60) == 57 and successes_of(1 / 3, 60) == 20 and successes_of(0.0, 7) == 0


def test_a_per_call_accuracy_is_not_rounded_to_a_whole_count():
    """57.5 of 100: a randomized predictor's mean of per-image fractions; its interval lies
    strictly between those of 57 and 58 correct images, at the closed form with p = 0.575."""
    low, high = wilson(57.5, 100)
    assert wilson(57, 100)[0] < low < wilson(58, 100)[0] and wilson(57, 100)[1] < high < wilson(58, 100)[1]
    assert (low, high) == pytest.approx((0.47710, 0.66734), abs=1e-4)
    assert accuracy_interval(0.575, 100) == (low, high)
    assert accuracy_interval(0.5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


@pytest.mark.parametrize("accuracy, n", [(None, 100), (math.nan, 100), (0.5, None), (0.5, math.nan), (0.5, 0),
                                         (True, 10), ("0.5", 10)])
def test_a_missing_accuracy_or_n_has_no_interval(accuracy, n):
    low, high = accuracy_interval(accuracy, n)
    assert math.isnan(low) and math.isnan(high)


def test_accuracy_interval_takes_numpy_numbers_and_clips_float_noise():
    assert accuracy_interval(np.float64(0.9), np.int64(100)) == wilson(90, 100)
    assert accuracy_interval(1.0 + 1e-12, 7) == (wilson(7, 7)[0], 1.0)


@pytest.mark.parametrize("n, half_at_half, half_at_ninety", [
    (100, 0.096, 0.060), (200, 0.069, 0.042), (360, 0.051, 0.031), (500, 0.044, 0.026), (1000, 0.031, 0.019)])
def test_the_half_widths_the_readme_quotes(n, half_at_half, half_at_ninety):
    """95% half-widths (high − low) / 2 of accuracies 0.5 and 0.9 on n images; 360 is digits'
    whole test split."""
    for p, half in ((0.5, half_at_half), (0.9, half_at_ninety)):
        low, high = accuracy_interval(p, n)
        assert (high - low) / 2 == pytest.approx(half, abs=5e-4)


@pytest.mark.parametrize("n, rate", [(40, 0.01), (360, 0.01), (1000, 0.02), (100, 0.3)])
def test_count_limit_is_where_the_wilson_interval_leaves_the_base_rate(n, rate):
    """A count above the limit has a 95% Wilson interval wholly above the base rate; a count at
    or below it does not: the masking checks' limit and the reported intervals agree."""
    limit = stats.count_limit(n, rate)
    assert limit == pytest.approx(n * rate + 1.96 * math.sqrt(n * rate * (1 - rate)))
    assert stats.wilson(limit + 1e-6, n)[0] > rate
    assert stats.wilson(limit - 1e-6, n)[0] <= rate
    assert stats.wilson(math.floor(limit), n)[0] <= rate < stats.wilson(math.floor(limit) + 1, n)[0]


def test_a_zero_base_rate_lets_no_count_pass():
    assert stats.count_limit(500, 0.0) == 0.0 and stats.wilson(1, 500)[0] > 0
    with pytest.raises(ValueError):
        stats.count_limit(10, 1.5)
