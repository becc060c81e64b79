"""The 2-D hypervolume and the Pareto mask against brute force, with ties, duplicates, NaN rows
and three objectives."""
import itertools

import numpy as np
import pytest

from raysearch.pareto import hypervolume_2d, pareto_mask


def brute_front(points):
    out = []
    for i, a in enumerate(points):
        dominated = any((b >= a).all() and (b > a).any() for j, b in enumerate(points) if j != i)
        out.append(not dominated)
    return np.array(out)


def brute_hv(points, ref=(0.0, 0.0)):
    """Monte-Carlo-free brute force: area of the union of boxes on the grid of all coordinates."""
    points = [q for q in points if q[0] > ref[0] and q[1] > ref[1]]
    if not points:
        return 0.0
    xs = sorted({ref[0], *[q[0] for q in points]})
    ys = sorted({ref[1], *[q[1] for q in points]})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if any(q[0] >= cx and q[1] >= cy for q in points):
            area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("seed", range(30))
def test_front_and_hypervolume_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    # coarse values force ties on one coordinate and exact duplicates
    points = rng.integers(0, 6, size=(n, 2)) / 5.0
    if n > 2:
        points[1] = points[0]
    assert (pareto_mask(points) == brute_front(points)).all()
    assert hypervolume_2d(points) == pytest.approx(brute_hv(points.tolist()), abs=1e-12)


def test_duplicates_are_all_on_the_front_and_count_once():
    points = np.array([[0.9, 0.5], [0.9, 0.5], [0.5, 0.9]])
    assert pareto_mask(points).tolist() == [True, True, True]
    assert hypervolume_2d(points) == pytest.approx(0.9 * 0.5 + 0.5 * 0.4)


def test_nan_rows_are_off_the_front():
    points = np.array([[np.nan, 1.0], [0.2, 0.3]])
    assert pareto_mask(points).tolist() == [False, True]
    assert hypervolume_2d(points) == pytest.approx(0.06)


def test_three_objectives():
    points = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0.5]])
    assert pareto_mask(points).tolist() == [True, True, True, False]
