"""The attack suite: a registry (plain data) of attacks, each a pure function of tensors.

Every attack has the call shape ``fn(model, x, y, eps, *, eot=1, seed=0, **params) -> x_adv``:
``x`` in [0, 1] (N×C×H×W) on any device, ``model`` maps images to logits and is called as is
(the caller puts it in eval mode), ``eot`` > 1 averages each gradient (and each score) over that
many draws of a randomized model, ``seed`` seeds the attack's own generator (no global RNG
state is left changed: Square on a randomized model seeds torch's streams to replay draws and
restores them). The result is detached, in [0, 1], and within the attack's budget.

Threat labels (``raysearch.schema.Threat``) are relative to a trial's threat model, L∞ at
ε_eval: SEEN attacks are L∞ at ε_eval; UNSEEN ones use another geometry (L2, flow, colour, DCT)
or are natural corruptions (family "corruption": reported apart from the union over the unseen
adversarial attacks, so that the unseen axis means the same for every method); CHECK attacks
exist for the gradient-masking checks (ε sweeps) and count in no robust number.

Budgets are plain data, ``(kind, factor)``: ``eps_eval`` (× the trial's L∞ radius),
``eps_eval_l2`` (× the data set's L2 radius), ``cifar`` (a CIFAR-scale value × the data set's
eps_scale, the convention of the search spaces), ``size`` (× the image side, pixels),
``abs`` (the factor itself) and ``none``.

Settings are the literature's standard: PGD 50 steps × 5 restarts (CE and CW margin),
APGD-CE/-DLR 100 iterations (AutoAttack), APGD-T 9 targets × 100 iterations, Square 5000
queries with p_init 0.8. Unseen budgets follow Laidlaw et al. (2021) and Kang et al. (2019)
in spirit: StAdv flow ≤ 1 px at 32 px, ReColor 0.06 per channel at CIFAR scale, JPEG 8/255 per
DCT coefficient at CIFAR scale.

Randomized predictors follow AutoAttack's protocol for randomized defenses (its "rand"
version: APGD-CE and APGD-DLR, 100 iterations, EOT over 20 draws): every gradient is an EOT
average, PGD runs one restart (the draws replace restarts), APGD-T is not run, and Square
spends 1000 queries on every image without stopping early, each query measuring the incumbent
and the proposal on the same random draws (two calls); every attack's images are scored per
call (``raysearch.evaluate.runner``). (5000 queries at 20 draws each would cost more than the
whole rand protocol.) Square is not in that protocol; it stays because the evaluation protocol asks
every purification defense to face a gradient-free attack, which a purifier's obfuscated
gradients cannot stop (see README, 'The evaluation protocol').
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from raysearch.attacks.apgd import apgd
from raysearch.attacks.corruptions import CORRUPTIONS, corrupt
from raysearch.attacks.jpeg import jpeg
from raysearch.attacks.pgd import fgsm, pgd
from raysearch.attacks.recolor import recolor
from raysearch.attacks.square import square
from raysearch.attacks.stadv import stadv
from raysearch.schema import Threat
from trainables.spec import DataSpec

BUDGET_KINDS = ("eps_eval", "eps_eval_l2", "cifar", "size", "abs", "none")


@dataclass(frozen=True)
class AttackSpec:
    """One registered attack: its function, how it is reported, its budget and parameters."""

    name: str
    fn: Callable
    family: str  # attacks of one family are variants of one method; reported as their worst case
    threat: Threat
    norm: str  # "linf" | "l2" | "flow" | "colour" | "dct" | "none"
    budget: tuple[str, float]  # (kind, factor), see the module docstring
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    gradient: bool = True  # white-box: uses input gradients (so EOT and BPDA variants apply)
    default: bool = True  # part of the default suite
    surrogate: bool = False  # crafted on the bare classifier and transferred to the predictor
    summary: str = ""
    # against a randomized predictor: parameters merged over ``params`` ("eot": calls per query
    # or gradient instead of the EOT budget), or None to skip (AutoAttack's rand version)
    randomized: Mapping[str, Any] | None = field(default_factory=lambda: MappingProxyType({}))


def _entry(name, fn, family, threat, norm, budget, params=None, randomized=(), **kw) -> tuple[str, AttackSpec]:
    """(name, its AttackSpec) with read-only parameter mappings."""
    rand = None if randomized is None else MappingProxyType(dict(randomized))
    return name, AttackSpec(name, fn, family, threat, norm, budget, MappingProxyType(dict(params or {})),
                            randomized=rand, **kw)


ONE_RESTART = {"restarts": 1}  # randomized predictors: EOT over 20 draws replaces restarts


PGD = {"steps": 50, "restarts": 5}
CHECK_PGD = {"steps": 50, "restarts": 1, "loss": "ce"}

ATTACKS: dict[str, AttackSpec] = dict([
    # seen: L∞ at ε_eval
    _entry("fgsm", fgsm, "fgsm", Threat.SEEN, "linf", ("eps_eval", 1.0), summary="one signed step of size ε"),
    _entry("pgd_ce", pgd, "pgd", Threat.SEEN, "linf", ("eps_eval", 1.0), {**PGD, "loss": "ce"}, ONE_RESTART,
          summary="PGD-50, 5 restarts, cross-entropy"),
    _entry("pgd_cw", pgd, "pgd", Threat.SEEN, "linf", ("eps_eval", 1.0), {**PGD, "loss": "margin"}, ONE_RESTART,
          summary="PGD-50, 5 restarts, CW margin loss"),
    _entry("apgd_ce", apgd, "apgd", Threat.SEEN, "linf", ("eps_eval", 1.0), {"n_iter": 100, "loss": "ce"},
          summary="APGD-CE, 100 iterations (AutoAttack)"),
    _entry("apgd_dlr", apgd, "apgd", Threat.SEEN, "linf", ("eps_eval", 1.0), {"n_iter": 100, "loss": "dlr"},
          summary="APGD-DLR, 100 iterations (AutoAttack)"),
    _entry("apgd_t", apgd, "apgd", Threat.SEEN, "linf", ("eps_eval", 1.0), {"n_iter": 100, "n_targets": 9}, None,
          summary="APGD-T, targeted DLR, 9 targets × 100 iterations (AutoAttack standard)"),
    _entry("square", square, "square", Threat.SEEN, "linf", ("eps_eval", 1.0), {"n_queries": 5000, "p_init": 0.8},
          {"eot": 1, "full_budget": True, "n_queries": 1000},
          gradient=False, summary="Square, 5000 queries, p_init 0.8 (gradient-free)"),
    _entry("transfer_pgd", pgd, "transfer", Threat.SEEN, "linf", ("eps_eval", 1.0), {**PGD, "loss": "ce"},
          surrogate=True, summary="PGD-50 × 5 on the bare classifier, transferred to the predictor"),
    # unseen
    _entry("pgd_l2", pgd, "pgd_l2", Threat.UNSEEN, "l2", ("eps_eval_l2", 1.0), {**PGD, "loss": "ce", "norm": "l2"},
          ONE_RESTART, summary="L2 PGD-50, 5 restarts"),
    _entry("apgd_l2", apgd, "apgd_l2", Threat.UNSEEN, "l2", ("eps_eval_l2", 1.0),
          {"n_iter": 100, "loss": "ce", "norm": "l2"}, summary="L2 APGD-CE, 100 iterations"),
    _entry("stadv", stadv, "stadv", Threat.UNSEEN, "flow", ("size", 1 / 32), {"steps": 50},
          summary="StAdv flow field ≤ 1 px at 32 px, smoothness penalty"),
    _entry("recolor", recolor, "recolor", Threat.UNSEEN, "colour", ("cifar", 0.06), {"steps": 50},
          summary="smooth colour mapping, ≤ 0.06 per channel at CIFAR scale"),
    _entry("jpeg", jpeg, "jpeg", Threat.UNSEEN, "dct", ("cifar", 8 / 255), {"steps": 50},
          summary="8×8 block DCT coefficients, ≤ 8/255 each at CIFAR scale"),
    *[_entry(f"{kind}_s{sev}", corrupt, "corruption", Threat.UNSEEN, "none", ("none", math.nan),
            {"kind": kind, "severity": sev}, gradient=False, default=sev in (1, 3, 5),
            summary=f"{kind.replace('_', ' ')}, severity {sev}")
      for kind in CORRUPTIONS for sev in range(1, 6)],
    # checks: ε sweep with one PGD setting (robust accuracy must fall with ε, to ~0 unbounded)
    *[_entry(f"pgd_eps_x{f:g}", pgd, "eps_sweep", Threat.CHECK, "linf", ("eps_eval", f), CHECK_PGD,
            summary=f"PGD-50 at {f:g}×ε_eval") for f in (0.5, 1.0, 2.0)],
    _entry("pgd_unbounded", pgd, "eps_sweep", Threat.CHECK, "linf", ("abs", 1.0), CHECK_PGD,
          summary="PGD-50 at ε = 1 (any image): must reach ~0%"),
])

DEFAULT_SUITE: tuple[str, ...] = tuple(n for n, a in ATTACKS.items() if a.default)


def budget(attack: AttackSpec, spec: DataSpec, eps_eval: float | None = None) -> float:
    """The attack's ε for a data set (and a trial's L∞ radius, default the data set's)."""
    kind, factor = attack.budget
    if kind == "eps_eval":
        return factor * (spec.eps_eval if eps_eval is None else eps_eval)
    if kind == "eps_eval_l2":
        return factor * spec.eps_eval_l2
    if kind == "cifar":
        return factor * spec.eps_scale
    if kind == "size":
        return factor * spec.size
    if kind == "abs":
        return factor
    if kind == "none":
        return math.nan
    raise ValueError(f"{attack.name}: unknown budget kind {kind!r}; known: {', '.join(BUDGET_KINDS)}")


def min_classes(attack: AttackSpec) -> int:
    """The fewest classes the attack's loss is defined for: the DLR loss divides by the gap
    between the top logit and the third (4 classes for its targeted form, which also needs a
    third and fourth logit other than the true and the target's), the others need 2."""
    if attack.params.get("n_targets"):
        return 4
    return 3 if attack.params.get("loss") == "dlr" else 2


def run_params(attack: AttackSpec, randomized: bool = False) -> dict[str, Any]:
    """The attack's registered parameters, with its overrides for a randomized predictor when
    ``randomized`` (an "eot" among them fixes the calls per query or gradient)."""
    params = dict(attack.params)
    if randomized:
        if attack.randomized is None:
            raise ValueError(f"{attack.name} is not run on randomized predictors")
        params.update(attack.randomized)
    return params


def run(attack: AttackSpec, model: Callable, x, y, eps: float, *, eot: int = 1, seed: int = 0,
        randomized: bool = False):
    """Call an attack with its registered parameters (``randomized``: with its overrides for a
    randomized predictor, ``eot`` calls per query or gradient unless they fix it)."""
    params = run_params(attack, randomized)
    eot = params.pop("eot", eot)
    return attack.fn(model, x, y, eps, eot=eot, seed=seed, **params)


__all__ = ["ATTACKS", "AttackSpec", "BUDGET_KINDS", "DEFAULT_SUITE", "budget", "min_classes", "run", "run_params",
           "apgd", "pgd", "fgsm", "square", "stadv", "recolor", "jpeg", "corrupt"]
