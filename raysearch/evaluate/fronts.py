"""The fronts under the final attacks, over everything evaluated: every trial with final rows in
evals.parquet, from this evaluation or an earlier one, read back from the stored rows.

Per attack and aggregate (then ``worst_seen`` at each radius of the robustness curve): the
trials on the (clean, accuracy) front and its hypervolume above (0, 0). A trial evaluated
without some attack has no point on that attack's front. A randomized predictor's ensemble
values (``*_ensemble``: the vote of its scoring calls, a predictor nobody deploys) get no front."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from raysearch import pareto
from raysearch.schema import CURVE_MARK, Stage, Threat

WORST_SEEN = "worst_seen"
ENSEMBLE_SUFFIX = "_ensemble"  # the ensemble values of raysearch.evaluate.report


@dataclass
class Evaluated:
    """One trial's final accuracies as stored: clean, the attacks and aggregates at ε_eval in
    their stored order (no ensemble values), and worst_seen at each further radius
    (``worst_seen@<radius>``) by increasing radius."""

    clean: float = math.nan
    plain: dict[str, float] = field(default_factory=dict)
    curve: dict[str, float] = field(default_factory=dict)

    def accuracy(self, name: str) -> float:
        """An attack's or aggregate's accuracy; NaN for a name the trial was not evaluated with."""
        return self.plain.get(name, self.curve.get(name, math.nan))


def evaluated(rows: Iterable[dict[str, Any]], first: Sequence[str] = ()) -> dict[str, Evaluated]:
    """Every trial with final rows among ``rows`` (evals.parquet's): the trials of ``first``
    that have some in that order, then the others in the order they appear."""
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("stage") == Stage.FINAL:
            by_trial.setdefault(r["trial_id"], []).append(r)
    order = list(dict.fromkeys([t for t in first if t in by_trial] + list(by_trial)))
    out = {}
    for tid in order:
        trial = Evaluated()
        curve = []
        for r in by_trial[tid]:
            name = r["attack"]
            if r.get("threat") == Threat.CLEAN:
                if name == "clean":
                    trial.clean = r["accuracy"]
            elif name.endswith(ENSEMBLE_SUFFIX):
                continue
            elif CURVE_MARK not in name:
                trial.plain[name] = r["accuracy"]
            elif name.split(CURVE_MARK)[0] == WORST_SEEN:
                curve.append((r["eps"], name, r["accuracy"]))
        trial.curve = {name: acc for _, name, acc in sorted(curve)}
        out[tid] = trial
    return out


def fronts(trials: dict[str, Evaluated]) -> tuple[dict[str, list[str]], dict[str, float]]:
    """For every attack and aggregate any trial has (then worst_seen at each radius): the trials
    on the (clean, accuracy) front and its hypervolume above (0, 0)."""
    names = list(dict.fromkeys([n for t in trials.values() for n in t.plain]
                               + [n for t in trials.values() for n in t.curve]))
    ids = list(trials)
    on_front, hv = {}, {}
    for name in names:
        pts = np.array([[trials[t].clean, trials[t].accuracy(name)] for t in ids], dtype=float)
        mask = pareto.pareto_mask(pts)
        on_front[name] = [t for t, on in zip(ids, mask) if on]
        hv[name] = pareto.hypervolume_2d(pts[mask]) if mask.any() else 0.0
    return on_front, hv


def format_fronts(on_front: dict[str, list[str]], hv: dict[str, float], trials: dict[str, Evaluated]) -> str:
    lines = ["front (clean vs accuracy under each attack), recomputed on the test subset:"]
    for name, ids in on_front.items():
        pts = ", ".join(f"{t} ({trials[t].clean:.3f}/{trials[t].accuracy(name):.3f})" for t in ids)
        lines.append(f"  {name:26s} hv {hv[name]:.3f}  {pts}")
    return "\n".join(lines)
