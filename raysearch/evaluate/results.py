"""What evaluating one predictor produces: each attack's per-image result and the report that
gathers them with the aggregates, the masking flags and the robustness curve (the seen attacks
at further L∞ radii, kept apart from the ε_eval results so that no number at ε_eval changes).
Plain data; no attack runs here.

Per-image values are per-call scores: the fraction of the report's ``scoring_calls`` fresh
calls that answered correctly (0 or 1 for a deterministic predictor, scored on one call). A
randomized predictor's ensemble vote over those calls is kept apart (``clean_ensemble``,
``AttackResult.ensemble``, ``PredictorReport.ensemble``), never as the default number."""
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
    # per image min(clean, attacked) fraction of the scoring calls correct (bool accepted: 0/1)
    robust: torch.Tensor
    eot_samples: int  # random draws per gradient
    seconds: float
    gradient: bool = True
    surrogate: bool = False
    scoring_calls: int = 1  # fresh predictor calls that score each image
    # randomized predictors only: bool per image, the vote of the scoring calls correct clean and attacked
    ensemble: torch.Tensor | None = None

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else math.nan


@dataclass
class PredictorReport:
    n: int
    clean: torch.Tensor  # per image, fraction of the scoring calls correct (bool accepted: 0/1)
    randomized: bool
    eot: int  # random draws per gradient
    results: list[AttackResult] = field(default_factory=list)
    aggregates: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # name -> (family, threat, acc)
    flags: list[str] = field(default_factory=list)
    draws_per_call: int = 1  # random draws one predictor call averages
    eps_eval: float = math.nan  # L∞ radius of the seen attacks in ``results``
    # the robustness curve: L∞ radius (not ε_eval) -> the seen attacks run there, and the per-image
    # worst case over them
    curve_results: dict[float, list[AttackResult]] = field(default_factory=dict)
    curve: dict[float, float] = field(default_factory=dict)
    scoring_calls: int = 1  # fresh calls that score each image (1 for a deterministic predictor)
    # randomized predictors only: bool per image, the vote of the clean scoring calls correct
    clean_ensemble: torch.Tensor | None = None
    # randomized predictors only: "clean_ensemble", "worst_seen_ensemble" -> accuracy of the vote
    ensemble: dict[str, float] = field(default_factory=dict)

    @property
    def clean_acc(self) -> float:
        """Mean over images of the per-call clean score."""
        return float(self.clean.float().mean())

    def accuracy(self, name: str) -> float:
        """An attack's, aggregate's or ensemble value's accuracy; a robustness-curve name
        (``curve_attack``, e.g. ``worst_seen@0.1``) gives its result at that radius; NaN for a
        name not in the report."""
        if name in self.aggregates:
            return self.aggregates[name][2]
        if name in self.ensemble:
            return self.ensemble[name]
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
