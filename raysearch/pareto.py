"""Pareto front and hypervolume for objectives that are all maximized (accuracies).

A point dominates another if it is at least as good in every objective and better in one.
Duplicates do not dominate each other, so identical points are all on the front.
"""
from __future__ import annotations

import numpy as np


def pareto_mask(points) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an (n, k) array (NaN rows are never on it)."""
    p = np.asarray(points, dtype=float)
    if p.ndim != 2:
        raise ValueError("points must be an (n, k) array")
    n = len(p)
    valid = ~np.isnan(p).any(axis=1)
    mask = valid.copy()
    order = np.lexsort(tuple(-p[:, j] for j in reversed(range(p.shape[1]))))  # best first
    for i in order:
        if not mask[i]:
            continue
        ge = (p[valid] >= p[i]).all(axis=1)
        gt = (p[valid] > p[i]).any(axis=1)
        if (ge & gt).any():
            mask[i] = False
    return mask if n else np.zeros(0, dtype=bool)


def hypervolume_2d(points, ref=(0.0, 0.0)) -> float:
    """Area dominated by the points and bounded below by ``ref`` (both objectives maximized).
    Points that do not strictly dominate the reference contribute nothing."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    p = p[~np.isnan(p).any(axis=1)]
    p = p[(p[:, 0] > ref[0]) & (p[:, 1] > ref[1])]
    if not len(p):
        return 0.0
    p = p[np.argsort(-p[:, 0], kind="stable")]  # descending in the first objective
    area, best_y = 0.0, ref[1]
    for x, y in p:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return float(area)
