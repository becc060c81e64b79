"""Checks on the final evaluation's numbers: attacks that stayed in [0, 1] and in their
budget, randomness the predictor does not declare, and the gradient-masking flags stored with
the results (see the package docstring for what each flag means)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from raysearch.attacks import AttackSpec
from raysearch.evaluate.suite import BPDA
from raysearch.schema import Threat
from raysearch.evaluate.results import PredictorReport


FLAG_RANDOM = "unflagged_randomness"
FLAG_GRADIENT_FREE = "gradient_free_beats_whitebox"
FLAG_TRANSFER = "transfer_beats_whitebox"
FLAG_FGSM = "fgsm_beats_pgd"
FLAG_BPDA = "bpda_beats_backward"
FLAG_EPS = "accuracy_not_falling_with_eps"
FLAG_UNBOUNDED = "unbounded_attack_fails"
FLAG_CE = "ce_weaker_than_margin"
FLAG_PROXY = "proxy_overestimates_robustness"
CE_GAP = 0.05  # CE attacks leaving this much more accuracy than CW/DLR ones: CE saturates
PROXY_GAP = 0.10  # per-epoch proxy this much above the final worst case: the search was misled
UNBOUNDED_MAX_ACC = 0.02  # accuracy at ε = 1 (any image) above this (+ noise tolerance): attack not working


def randomness_leak(model: Callable, x: torch.Tensor) -> bool:
    """True if two calls on the same images give different logits (beyond float noise)."""
    with torch.no_grad():
        first, second = model(x), model(x)
    return not torch.allclose(first, second, rtol=1e-4, atol=1e-5 * float(first.abs().max()) + 1e-6)


def check_range(name: str, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    """Refuse to report a number from an attack that changed the shape or left [0, 1]."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{name}: returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if len(x) and (not torch.isfinite(x_adv).all() or x_adv.min() < 0 or x_adv.max() > 1):
        raise RuntimeError(f"{name}: adversarial images outside [0, 1]")


def check_budget(attack: AttackSpec, x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    """Refuse to report a number from an attack that left [0, 1] or its ε-ball."""
    check_range(attack.name, x, x_adv)
    if not len(x):
        return
    delta = (x_adv - x).flatten(1)
    if attack.norm == "linf" and delta.abs().max() > eps * (1 + 1e-5) + 1e-6:
        raise RuntimeError(f"{attack.name}: L∞ perturbation {delta.abs().max():.4g} exceeds ε {eps:.4g}")
    if attack.norm == "l2" and delta.norm(dim=1).max() > eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"{attack.name}: L2 perturbation {delta.norm(dim=1).max():.4g} exceeds ε {eps:.4g}")


def proxy_overstates(proxy, worst_seen: float) -> bool:
    """True if the search's per-epoch proxy (``robust_acc``) is more than PROXY_GAP above the
    final worst case over seen attacks."""
    return isinstance(proxy, (int, float)) and math.isfinite(proxy) and proxy > worst_seen + PROXY_GAP


def masking_flags(rep: PredictorReport) -> list[str]:
    """Signs that gradients are masked or randomness unaccounted for (see the package docstring).
    Differences smaller than max(1%, 2 images) are treated as noise."""
    tol = max(0.01, 2.0 / max(rep.n, 1))
    res = {r.attack: r for r in rep.results}
    flags = []
    whitebox = [r for r in rep.results if r.threat == Threat.SEEN and r.gradient and not r.surrogate
                and r.family != "fgsm"]
    best_whitebox = min((r.accuracy for r in whitebox), default=math.nan)
    free = [r for r in rep.results if r.threat == Threat.SEEN and not r.gradient]
    if whitebox and any(r.accuracy < best_whitebox - tol for r in free):
        flags.append(FLAG_GRADIENT_FREE)
    transfer = [r for r in rep.results if r.surrogate and r.threat == Threat.SEEN]
    if whitebox and any(r.accuracy < best_whitebox - tol for r in transfer):
        flags.append(FLAG_TRANSFER)
    pgd = [r for r in rep.results if r.family == "pgd"]
    fgsm = [r for r in rep.results if r.family == "fgsm"]
    if pgd and fgsm and min(r.accuracy for r in fgsm) < min(r.accuracy for r in pgd) - tol:
        flags.append(FLAG_FGSM)
    if any(name.endswith(BPDA) and name[:-len(BPDA)] in res and r.accuracy < res[name[:-len(BPDA)]].accuracy - tol
           for name, r in res.items()):
        flags.append(FLAG_BPDA)
    sweep = sorted((r for r in rep.results if r.family == "eps_sweep"), key=lambda r: r.eps)
    if any(b.accuracy > a.accuracy + tol for a, b in zip(sweep, sweep[1:])):
        flags.append(FLAG_EPS)
    ce = [r.accuracy for r in whitebox if r.attack.split("+")[0] in ("pgd_ce", "apgd_ce")]
    # untargeted margin losses only: targeted APGD is stronger than CE on sound models too
    margin = [r.accuracy for r in whitebox if r.attack.split("+")[0] in ("pgd_cw", "apgd_dlr")]
    if ce and margin and min(ce) > min(margin) + max(CE_GAP, tol):
        flags.append(FLAG_CE)
    unbounded = [r for r in sweep if r.eps >= 1.0]
    if unbounded and unbounded[-1].accuracy > UNBOUNDED_MAX_ACC + tol:
        flags.append(FLAG_UNBOUNDED)
    return flags
