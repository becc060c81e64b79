"""What evaluating one predictor produces: each attack's per-image result and the report that
gathers them with the aggregates, the masking flags and the robustness curve (the seen attacks
at further L∞ radii, kept apart from the ε_eval results so that no number at ε_eval changes).
Plain data; no attack runs here.

Each result also says how it was measured (``iterations``, ``restarts``, ``queries``: the
evals.parquet columns of the same names; the report's ``protocol`` holds for all of its rows),
and the report keeps the per-image signs the masking checks count (``no_gradient``,
``saturated``) and the checks themselves (``checks``, ``raysearch.evaluate.checks``).

Per-image values are per-call scores: the fraction of the report's ``scoring_calls`` fresh
calls that answered correctly (0 or 1 for a deterministic predictor, scored on one call). A
randomized predictor's ensemble vote over those calls is kept apart (``clean_ensemble``,
``AttackResult.ensemble``, ``PredictorReport.ensemble``), never as the default number."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from raysearch.schema import Protocol, curve_attack

UNKNOWN = -1  # iterations, restarts or queries of an attack whose settings the suite does not see


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
    iterations: int = 0  # gradient or optimization steps per run (0: none; UNKNOWN)
    restarts: int = 1  # runs per image (× targets of a targeted attack; UNKNOWN)
    queries: int = 0  # predictor queries per image of a gradient-free search (0: none; UNKNOWN)
    defense: bool = False  # one of the defense's own attacks: reported apart from the unseen union

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else math.nan


@dataclass(frozen=True)
class Check:
    """One masking check: ``count`` of the ``n`` images show its sign; it fires when the count
    is above ``limit``, the most that noise explains (``raysearch.evaluate.checks``)."""

    count: int
    n: int
    limit: float
    what: str  # one line: which images are counted

    @property
    def fired(self) -> bool:
        return self.count > self.limit

    def as_dict(self) -> dict:
        """The JSON form stored in trials.parquet's ``masking_checks``."""
        return {"count": self.count, "n": self.n, "limit": round(self.limit, 3), "fired": self.fired,
                "what": self.what}


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
    # per image, on the clean images: no input gradient of the loss reaches the input (bool), and
    # the softmax is saturated (bool); None where not measured
    no_gradient: torch.Tensor | None = None
    saturated: torch.Tensor | None = None
    checks: dict[str, Check] = field(default_factory=dict)  # masking check name -> its count and limit

    @property
    def protocol(self) -> Protocol:
        return Protocol.RAND if self.randomized else Protocol.STANDARD

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
