"""What evaluating one predictor produces: each attack's per-image result and the report that
gathers them with the aggregates, the masking flags and the robustness curve (the seen attacks
at further L∞ radii, kept apart from the ε_eval results so that no number at ε_eval changes).
Plain data; no attack runs here."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from raysearch.schema import curve_attack


@dataclass
class AttackResult:
    attack: str  # registry name, "+bpda" appended for the BPDA variant
    family: str
    threat: str
    norm: str
    eps: float
    robust: torch.Tensor  # bool per image (clean-correct and attack-survived)
    eot_samples: int
    seconds: float
    gradient: bool = True
    surrogate: bool = False

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else math.nan


@dataclass
class PredictorReport:
    n: int
    clean: torch.Tensor  # bool per image
    clean_per_draw: float  # mean single-call clean accuracy (= clean accuracy if deterministic)
    randomized: bool
    eot: int
    results: list[AttackResult] = field(default_factory=list)
    aggregates: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # name -> (family, threat, acc)
    flags: list[str] = field(default_factory=list)
    draws_per_call: int = 1  # random draws one predictor call averages
    eps_eval: float = math.nan  # L∞ radius of the seen attacks in ``results``
    # the robustness curve: L∞ radius (not ε_eval) -> the seen attacks run there, and the per-image
    # worst case over them
    curve_results: dict[float, list[AttackResult]] = field(default_factory=dict)
    curve: dict[float, float] = field(default_factory=dict)

    @property
    def clean_acc(self) -> float:
        return float(self.clean.float().mean())

    def accuracy(self, name: str) -> float:
        """An attack's or aggregate's accuracy; a robustness-curve name (``curve_attack``, e.g.
        ``worst_seen@0.1``) gives its result at that radius; NaN for a name not in the report."""
        if name in self.aggregates:
            return self.aggregates[name][2]
        for r in self.results:
            if r.attack == name:
                return r.accuracy
        for radius, acc in self.curve.items():
            if name == curve_attack("worst_seen", radius):
                return acc
        for radius, results in self.curve_results.items():
            for r in results:
                if name == curve_attack(r.attack, radius):
                    return r.accuracy
        return math.nan

    def robustness_curve(self) -> dict[float, float]:
        """Radius -> worst case over seen attacks, ε_eval included, by increasing radius."""
        points = dict(self.curve)
        if "worst_seen" in self.aggregates and math.isfinite(self.eps_eval):
            points[self.eps_eval] = self.aggregates["worst_seen"][2]
        return dict(sorted(points.items()))
