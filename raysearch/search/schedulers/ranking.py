"""Orders of trials by two maximized objectives (clean, robust accuracy), best first, for the
multi-objective schedulers. Pure numpy, no Ray.

* ``fronts``: non-dominated sorting: the Pareto front, then the front of what is left, and so on.
* ``moasha_order`` (MO-ASHA, Schmucker et al. 2021): inside a front, an ε-net order: start from
  the point best in the first objective, then repeatedly take the point farthest from those
  already taken (Clarkson's greedy net), so the first k of a front are spread along it instead of
  crowded at one end. Both objectives are accuracies on the same [0, 1] scale, so distances are
  plain Euclidean without normalization.
* ``crowding_order`` (MO-PBT, Dushatskiy et al. 2023): inside a front, NSGA-II's crowding
  distance, largest first (a front's two ends are infinitely far).

Ties keep the order the points were given in, so every order is deterministic.
"""
from __future__ import annotations

import numpy as np

from raysearch.pareto import pareto_mask


def _points(points) -> np.ndarray:
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if np.isnan(p).any():
        raise ValueError("objectives must be finite to be ranked")
    return p


def fronts(points) -> list[list[int]]:
    """Indices of the points by non-dominated front, the Pareto front first, each front in the
    order given."""
    p = _points(points)
    left = np.arange(len(p))
    out = []
    while len(left):
        mask = pareto_mask(p[left])
        out.append(left[mask].tolist())
        left = left[~mask]
    return out


def epsilon_net(points, members: list[int]) -> list[int]:
    """``members`` (indices into ``points``) in ε-net order: the best in the first objective
    (the earliest given among equals), then each time the member whose distance to the nearest
    member already taken is largest."""
    p = _points(points)
    left = list(members)
    first = max(left, key=lambda i: (p[i, 0], p[i, 1], -left.index(i)))
    order = [first]
    left.remove(first)
    while left:
        gaps = [np.linalg.norm(p[order] - p[i], axis=1).min() for i in left]
        order.append(left.pop(int(np.argmax(gaps))))  # argmax: the first of equal gaps
    return order


def crowding(points, members: list[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each member inside its front: per objective, the gap between
    its two neighbours over the front's range; the two ends of each objective get infinity."""
    p = _points(points)
    dist = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: float("inf") for i in members}
    for k in range(p.shape[1]):
        ordered = sorted(members, key=lambda i: p[i, k])
        span = p[ordered[-1], k] - p[ordered[0], k]
        dist[ordered[0]] = dist[ordered[-1]] = float("inf")
        for before, i, after in zip(ordered, ordered[1:], ordered[2:]):
            if span > 0:
                dist[i] += (p[after, k] - p[before, k]) / span
    return dist


def moasha_order(points) -> list[int]:
    """Every index, best first: fronts in order, each in ε-net order."""
    return [i for front in fronts(points) for i in epsilon_net(points, front)]


def crowding_order(points) -> list[int]:
    """Every index, best first: fronts in order, each by crowding distance, largest first."""
    out = []
    for front in fronts(points):
        dist = crowding(points, front)
        out.extend(sorted(front, key=lambda i: -dist[i]))  # stable: equals keep their order
    return out
