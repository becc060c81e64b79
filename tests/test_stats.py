"""Wilson score intervals (raysearch.stats) against published values."""
from __future__ import annotations

import pytest

from raysearch.stats import successes_of, wilson


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
