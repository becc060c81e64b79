"""Which trials the final evaluation attacks (``--final-candidates``): the proxy front, the band
of trials near it, every trial, or the K best ranked by non-dominated sorting.

Only completed trials with a checkpoint and finite proxy accuracies (``clean_acc``,
``robust_acc``: the per-epoch proxy on the validation split) are candidates. The proxy steers
the search but is no robustness claim: a trial a little below its front may be on the front
under the final attacks, so the default evaluates the band around the front too.

Pure Python and numpy: ``raysearch.tune`` checks the rule before Ray starts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from raysearch import pareto
from raysearch.schema import Status

FRONT, BAND, ALL = "front", "band", "all"
RULES = (FRONT, BAND, ALL)
DEFAULT_RULE = BAND


def default_rule(randomized: bool) -> str:
    """The search's default rule: the band, or the front alone for a randomized defense, whose
    suite costs about a hundred times a deterministic one's per image (20 EOT draws per gradient,
    20 scoring calls): its images go to a tighter interval on the front's trials instead of to
    more trials (the band's can be evaluated afterwards, ``python -m raysearch.evaluate
    --only-trials --trials ...``, as the search's last lines say)."""
    return FRONT if randomized else BAND

# The band: every trial that would be on the proxy front if each proxy accuracy were off by up to
# half the width either way (no front point beats it by more than the width in both). 0.03: the
# proxy measures on a few hundred validation images (500 by default; digits' whole split is 180),
# where one binomial standard error is 1.3 to 3.7 points, so errors of 1.5 points each way are
# common; a wider band soon takes most of a search (on the default digits pgd_at search, 0.03
# already takes 9 of 12 trials where the front has 4).
BAND_WIDTH = 0.03
# Accuracies are fractions k/n: a trial exactly BAND_WIDTH below a front point must not fall
# outside the band by a floating-point rounding of the difference.
_ROUNDING = 1e-9


class CandidatesError(ValueError):
    """A ``--final-candidates`` value that is not a rule; the message is one line for the user."""


def parse_rule(text: str) -> str:
    """The canonical rule: ``front``, ``band``, ``all``, or a positive whole number K as
    digits ("05" -> "5"); CandidatesError otherwise."""
    rule = str(text).strip().lower()
    if rule in RULES:
        return rule
    if rule.isdigit() and int(rule) >= 1:
        return str(int(rule))
    raise CandidatesError(f"--final-candidates must be front, band, all or a whole number K >= 1, got {text!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eligible(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The completed trials with a checkpoint and finite proxy accuracies, in their order."""
    return [r for r in rows if r.get("status") == Status.COMPLETED and r.get("checkpoint")
            and _finite(r.get("clean_acc")) and _finite(r.get("robust_acc"))]


def _points(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([[r["clean_acc"], r["robust_acc"]] for r in rows], dtype=float).reshape(-1, 2)


def front(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Trial ids on the clean-vs-robust proxy front of the eligible trials, in their order."""
    ok = eligible(rows)
    mask = pareto.pareto_mask(_points(ok))
    return [r["trial_id"] for r, on in zip(ok, mask) if on]


def in_band(points, front_points, width: float = BAND_WIDTH) -> np.ndarray:
    """Per point: whether no front point beats it by more than ``width`` in both objectives,
    i.e. ``point + (width, width)`` is not strictly dominated by the front. Front points are
    in their own band."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    f = np.asarray(front_points, dtype=float).reshape(-1, 2)
    if not len(f):
        return np.ones(len(p), dtype=bool)
    gap = f[None, :, :] - p[:, None, :]  # (point, front point, objective): how much the front point is better
    return ~(gap > width + _ROUNDING).all(axis=2).any(axis=1)


def crowding(points) -> np.ndarray:
    """NSGA-II's crowding distance of the points of one front: per objective, the gap between a
    point's neighbours divided by the objective's range; the two ends of each objective get inf."""
    p = np.asarray(points, dtype=float).reshape(len(points), -1)
    dist = np.zeros(len(p))
    if len(p) <= 2:
        return np.full(len(p), np.inf)
    for j in range(p.shape[1]):
        order = np.argsort(p[:, j], kind="stable")
        span = p[order[-1], j] - p[order[0], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (p[order[2:], j] - p[order[:-2], j]) / span
    return dist


def ranked(points) -> list[int]:
    """Indices of the points best first: non-dominated sorting (the front, then the front of
    the rest, and so on); within a front by crowding distance, largest first (the ends of the
    front first, then the points in its sparsest parts, so that a cut keeps the front's spread),
    ties by the sum of both objectives, then by position."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    left = list(range(len(p)))
    order: list[int] = []
    while left:
        mask = pareto.pareto_mask(p[left])
        layer = [i for i, on in zip(left, mask) if on]
        dist = crowding(p[layer])
        order += [i for _, _, i in sorted(zip(-dist, -p[layer].sum(axis=1), layer))]
        taken = set(layer)
        left = [i for i in left if i not in taken]
    return order


@dataclass(frozen=True)
class Selection:
    """The candidates one rule picked: ``ids`` in evaluation order, ``front`` the proxy front."""

    rule: str
    ids: tuple[str, ...]
    front: tuple[str, ...]

    def describe(self) -> str:
        """Why these trials, e.g. "front 4, band 3 (trials within 0.03 of the proxy front in both
        clean and robust accuracy)"."""
        on_front = sum(t in self.front for t in self.ids)
        others = len(self.ids) - on_front
        if self.rule == FRONT:
            return f"front {on_front}"
        if self.rule == BAND:
            return (f"front {on_front}, band {others} (trials within {BAND_WIDTH:g} of the proxy front in both "
                    f"clean and robust accuracy)")
        if self.rule == ALL:
            return f"front {on_front}, all {others} other completed trials"
        fewer = f" (only {len(self.ids)} completed)" if len(self.ids) < int(self.rule) else ""
        return (f"the {self.rule} best by non-dominated sorting of the proxy accuracies{fewer}: front {on_front} of "
                f"{len(self.front)}, next fronts {others}")


def band_left_out(rows: Sequence[dict[str, Any]], chosen: Selection) -> list[str]:
    """The band's trials that ``chosen`` does not include, in the rows' order."""
    return [t for t in select(rows, BAND).ids if t not in chosen.ids]


def select(rows: Sequence[dict[str, Any]], rule: str) -> Selection:
    """The candidates of ``rule`` (see ``parse_rule``). front, band and all: the front first,
    then the others in the rows' order; K: the K best ranked by ``ranked`` (all eligible
    trials if fewer), best first."""
    rule = parse_rule(rule)
    ok = eligible(rows)
    points = _points(ok)
    mask = pareto.pareto_mask(points)
    on_front = tuple(r["trial_id"] for r, on in zip(ok, mask) if on)
    if rule == FRONT:
        ids = on_front
    elif rule in (BAND, ALL):
        keep = in_band(points, points[mask]) if rule == BAND else np.ones(len(ok), dtype=bool)
        ids = on_front + tuple(r["trial_id"] for r, on, k in zip(ok, mask, keep) if k and not on)
    else:
        ids = tuple(ok[i]["trial_id"] for i in ranked(points)[:int(rule)])
    return Selection(rule, ids, on_front)
