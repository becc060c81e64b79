"""The suite plan: which attacks run, at which budget, against which model, for one predictor.

A request names registry attacks, groups (``GROUPS``) or ``AttackSpec`` objects. Against a
predictor each attack becomes one or more runs: transfer attacks are crafted on the bare
classifier (none when there is no other), attacks outside AutoAttack's rand protocol are
skipped for randomized predictors, and a predictor with a BPDA pipeline is also attacked
through it (on a randomized predictor only with the seen attacks).

The robustness curve (``eps_list``): the suite's seen attacks whose budget is ε_eval (kind
"eps_eval") run again at each further L∞ radius, each radius one more seen suite.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from raysearch import attacks
from raysearch.attacks import AttackSpec
from raysearch.schema import Threat, curve_attack
from trainables.base import DataSpec, Predictor

DEFENSE = "defense"  # pseudo attack name: every attack the trial's defense offers
GROUPS = ("default", "seen", "unseen", "check", DEFENSE)
DEFAULT_EOT = 20  # random draws per gradient and per score of a randomized predictor
BPDA = "+bpda"  # name suffix of an attack run through the predictor's BPDA pipeline


class EvalError(ValueError):
    """Bad input to the final evaluation; the message is one line for the user."""


def expand_attacks(names: Iterable[str | AttackSpec] | None) -> tuple[list[AttackSpec], bool]:
    """Attacks for a list of registry names, groups (see GROUPS) and ``AttackSpec`` objects
    (attacks outside the registry); second item: include the defense's own attacks. None means
    the default suite plus the defense's attacks."""
    if names is None:
        return [attacks.ATTACKS[n] for n in attacks.DEFAULT_SUITE], True
    out: dict[str, AttackSpec] = {}
    defense = False
    for name in names:
        if isinstance(name, AttackSpec):
            out[name.name] = name
        elif name == DEFENSE:
            defense = True
        elif name == "default":
            out.update((n, attacks.ATTACKS[n]) for n in attacks.DEFAULT_SUITE)
            defense = True
        elif name in (Threat.SEEN, Threat.UNSEEN, Threat.CHECK):
            out.update((n, attacks.ATTACKS[n]) for n in attacks.DEFAULT_SUITE if attacks.ATTACKS[n].threat == name)
        elif name in attacks.ATTACKS:
            out[name] = attacks.ATTACKS[name]
        else:
            raise EvalError(f"unknown attack {name!r}; known: {', '.join(list(attacks.ATTACKS) + list(GROUPS))}")
    return list(out.values()), defense


def variants(attack: AttackSpec, pred: Predictor, surrogate: Callable | None,
             calls: int) -> list[tuple[str, Callable, int]]:
    """How ``attack`` runs against ``pred``: (name suffix, model attacked, predictor calls per
    gradient and score) per run; [] to skip it."""
    model = pred.model
    if attack.surrogate:
        if surrogate is None or surrogate is model:
            return []
        return [("", surrogate, 1)]
    if pred.randomized and attack.randomized is None:
        return []  # not part of the protocol for randomized predictors (AutoAttack's rand version)
    out = [("", model, calls)]
    # BPDA on every white-box attack; on a randomized predictor (20 draws per gradient)
    # on the seen ones, which the robust accuracy is taken from
    if pred.bpda is not None and attack.gradient and (attack.threat == Threat.SEEN or not pred.randomized):
        out.append((BPDA, pred.bpda, calls))
    return out


def defense_variants(pred: Predictor) -> list[tuple[str, Callable]]:
    """(name suffix, model attacked) per run of one of the defense's own attacks."""
    return [("", pred.model)] + ([(BPDA, pred.bpda)] if pred.bpda is not None else [])


@dataclass(frozen=True)
class AttackRun:
    """One registry attack against one model: the predictor, its BPDA pipeline or the surrogate."""

    attack: AttackSpec
    suffix: str  # "" or BPDA
    target: Callable
    calls: int  # predictor calls per gradient and per score
    eps: float  # in the attack's norm's units
    randomized: bool  # with the attack's settings for randomized predictors
    classes: int = 0  # the data set's; a targeted attack runs on at most classes − 1 targets

    @property
    def name(self) -> str:
        return self.attack.name + self.suffix

    def __call__(self, model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, eot: int,
                 seed: int) -> torch.Tensor:
        return attacks.run(self.attack, model, x, y, eps, eot=eot, seed=seed, randomized=self.randomized)

    @property
    def key(self) -> tuple:
        """What the run computes: two runs with equal keys are the same attack (function,
        parameters, budget, model attacked, calls per gradient), e.g. ``pgd_ce`` and the
        ε-sweep's ``pgd_eps_x1`` on a randomized predictor, where both are PGD-50 with one
        restart and cross-entropy."""
        params = attacks.run_params(self.attack, self.randomized)
        eps = round(self.eps, 12) if math.isfinite(self.eps) else None  # NaN (no budget) never equals itself
        return (self.attack.fn, id(self.target), self.calls, eps, tuple(sorted(params.items())))

    @property
    def settings(self) -> tuple[int, int, int]:
        """(iterations, restarts, queries) per image as this run spends them (see ``settings``)."""
        return settings(self.attack, self.randomized, classes=self.classes)


def settings(attack: AttackSpec, randomized: bool = False, params: dict | None = None,
             classes: int = 0) -> tuple[int, int, int]:
    """(iterations, restarts, queries) per image of ``attack`` with its registered parameters
    (``randomized``: with its overrides for randomized predictors; ``params``: with these over
    them) over its function's defaults: iterations are ``steps`` or ``n_iter`` (a gradient
    attack without either takes one step, FGSM; a gradient-free one none), restarts are
    ``restarts`` × the targets of a targeted attack (``n_targets``, at most ``classes`` − 1
    wrong classes when ``classes`` is given, as the attack itself caps them), queries are
    ``n_queries`` (0 where none applies)."""
    merged = {name: p.default for name, p in inspect.signature(attack.fn).parameters.items()
              if p.default is not inspect.Parameter.empty}
    merged.update(attacks.run_params(attack, randomized and attack.randomized is not None))
    merged.update(params or {})
    iterations = merged.get("steps", merged.get("n_iter", 1 if attack.gradient else 0))
    targets = merged.get("n_targets", 0)
    if targets and classes:
        targets = min(targets, classes - 1)
    restarts = merged.get("restarts", 1) * max(1, targets)
    return int(iterations), int(restarts), int(merged.get("n_queries", 0))


def attack_runs(suite: Iterable[AttackSpec], pred: Predictor, spec: DataSpec, eps_eval: float,
                surrogate: Callable | None, calls: int) -> Iterator[AttackRun]:
    """Every run of ``suite`` against ``pred``, in suite order; each budget is computed as its
    attack comes up. Attacks whose loss needs more classes than the data set has are skipped
    (DLR needs 3, targeted DLR 4)."""
    for attack in suite:
        if spec.classes < attacks.min_classes(attack):
            continue
        eps = attacks.budget(attack, spec, eps_eval)
        randomized = pred.randomized and not attack.surrogate
        for suffix, target, k in variants(attack, pred, surrogate, calls):
            yield AttackRun(attack, suffix, target, k, eps, randomized, spec.classes)


def check_radii(eps_list: Iterable[float] | None) -> tuple[float, ...]:
    """The robustness curve's L∞ radii: each in (0, 1] (the [0, 1] pixel scale), by increasing
    radius, without repeats (radii that print alike under %g are one)."""
    radii: dict[str, float] = {}
    for eps in eps_list or ():
        try:
            radius = float(eps)
        except (TypeError, ValueError):
            raise EvalError(f"--eps-list: {eps!r} is not a number") from None
        if not (math.isfinite(radius) and 0 < radius <= 1):
            raise EvalError(f"--eps-list: every radius must be in (0, 1] on the [0, 1] pixel scale, got {eps}")
        radii.setdefault(curve_attack("", radius), radius)
    return tuple(sorted(radii.values()))


def curve_plan(suite: Iterable[AttackSpec], eps_list: Iterable[float], eps_eval: float
               ) -> tuple[list[AttackSpec], tuple[float, ...]]:
    """The robustness curve's attacks (the seen ones of ``suite`` with an ε_eval budget) and its
    radii other than ``eps_eval``, which the suite itself covers; nothing if either is empty."""
    seen = [a for a in suite if a.threat == Threat.SEEN and a.budget[0] == "eps_eval"]
    radii = tuple(r for r in check_radii(eps_list) if curve_attack("", r) != curve_attack("", eps_eval))
    return (seen, radii) if seen and radii else ([], ())
