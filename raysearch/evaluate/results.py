"""What evaluating one predictor produces: each attack's per-image result and the report that
gathers them with the aggregates and the masking flags. Plain data; no attack runs here."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


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

    @property
    def clean_acc(self) -> float:
        return float(self.clean.float().mean())

    def accuracy(self, name: str) -> float:
        if name in self.aggregates:
            return self.aggregates[name][2]
        for r in self.results:
            if r.attack == name:
                return r.accuracy
        return math.nan
