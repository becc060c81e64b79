"""Checks on the final evaluation's numbers: attacks that stayed in [0, 1] and in their
budget, randomness the predictor does not declare, and the gradient-masking checks stored with
the results, each as a count of images and the limit that noise explains.

Per-image checks, as AutoAttack's: an image counts for a check attack X (Square, the transfer
attack, the BPDA variants) when X fools it and no white-box gradient attack does. The white-box
attacks are the seen gradient attacks on the predictor, FGSM included, through its real backward
pass or its BPDA pipeline; a BPDA variant is compared with the attacks of its threat and norm
through the real backward pass only. For a deterministic predictor "fools" is exact (one call,
0 or 1). For a randomized one every image carries the fraction of its k scoring calls that
answered correctly, and two fractions of k calls differ by noise alone; X counts as fooling an image that the white-box attacks did not
when the 95% Wilson interval of its fraction (on k calls) lies wholly below the interval of the
white-box minimum (non-overlapping intervals: a difference well beyond per-call noise, so that
the few noisy images of a large set cannot add up to a flag). The white-box minimum is itself a
minimum over several noisy fractions, so it leans low: the rule errs towards not counting.

A check fires when its count is above ``raysearch.stats.count_limit(n, base rate)``: the count
whose 95% Wilson interval lies wholly above the base rate, the share of images a sound model
shows the sign on (1%: a PGD-AT digits model under the full suite has 1 of 360 test images that
Square alone fools; PGD-20 alone as the white-box suite leaves Square 4 of 40, which is what
the check is for). The unbounded PGD (ε = 1, any image reachable) counts the images it leaves
correct (at least half their calls correct), which a working attack leaves almost none of; its
comparison with the white-box attacks at ε_eval would count nearly every image. The zero-gradient
check counts correct images whose input gradient of the cross-entropy is zero on the real
predictor (a sound network has none). The saturated-softmax check counts the images that every
white-box attack left correct (some calls still correct) and whose clean top softmax
probability is within ``SATURATION`` of 1: there cross-entropy gradients vanish (logits scaled
up, a saturating output) and a robust number may rest on that. Saturated images that the attacks
fooled anyway hide nothing, and an undefended digits model has about a quarter of its images
saturated, all of them fooled.

Aggregate checks compare two accuracies on the same n images and fire when one lies beyond the
other's 95% Wilson interval (and beyond a minimum gap where a sound model has one): FGSM above
PGD, accuracy rising with ε, CE attacks far above margin ones, the search's proxy above the
final worst case. Their count is the gap in images, their limit the gap that noise allows.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from raysearch.attacks import AttackSpec, core
from raysearch.evaluate.aggregates import worst_per_image
from raysearch.evaluate.results import AttackResult, Check, PredictorReport
from raysearch.evaluate.suite import BPDA
from raysearch.schema import Threat
from raysearch.stats import accuracy_interval, count_limit, wilson

FLAG_RANDOM = "unflagged_randomness"
FLAG_GRADIENT_FREE = "gradient_free_beats_whitebox"
FLAG_TRANSFER = "transfer_beats_whitebox"
FLAG_FGSM = "fgsm_beats_pgd"
FLAG_BPDA = "bpda_beats_backward"
FLAG_EPS = "accuracy_not_falling_with_eps"
FLAG_UNBOUNDED = "unbounded_attack_fails"
FLAG_CE = "ce_weaker_than_margin"
FLAG_PROXY = "proxy_overestimates_robustness"
FLAG_ZERO_GRADIENT = "zero_input_gradient"
FLAG_SATURATED = "saturated_softmax"

BASE_RATE = 0.01  # images a check attack alone fools on a sound model (AutoAttack: Square adds ~0.1 point)
UNBOUNDED_BASE_RATE = 0.02  # images PGD at ε = 1 leaves correct on a sound model (none in principle)
ZERO_GRADIENT_BASE_RATE = 0.0  # a sound differentiable model has no input with a zero loss gradient
SATURATION = 1e-6  # top softmax probability ≥ 1 − this: the CE gradient is (nearly) zero
NO_GRADIENT = 1e-30  # every pixel's |∂loss/∂x| at most this: zero up to float32 underflow
CE_GAP = 0.05  # CE attacks may leave this much more accuracy than margin ones on a sound model


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


# ---------------------------------------------------------------- per-image signs on the clean images

def gradient_signs(model: Callable, x: torch.Tensor, y: torch.Tensor, calls: int,
                   batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, on the real predictor: (no input gradient, saturated softmax), both bool.
    The gradient is the cross-entropy's, averaged over ``calls`` calls as the attacks' EOT
    gradient is; no gradient means every pixel's is at most ``NO_GRADIENT`` in size, or not
    finite, or that no gradient reaches the input at all. Saturated: the top softmax probability
    (averaged over the calls) is at least 1 − ``SATURATION``."""
    none, saturated = [], []
    # one graph of ``calls`` copies per slice of images: within the planned limit on image-calls
    # per forward/backward (``core.batch_limit``), not batch_size · calls
    step = max(1, min(batch_size, core.max_batch() // max(1, calls)))
    for i in range(0, len(x), step):
        xb = x[i:i + step].detach().requires_grad_(True)
        yb = y[i:i + step]
        with torch.enable_grad():
            z = core.draws(model, xb, calls)
            loss = core.ce_loss(z, yb).mean(0)
            grad = None
            if loss.requires_grad:
                grad, = torch.autograd.grad(loss.sum(), xb, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(xb)
        flat = grad.detach().flatten(1)
        none.append(~torch.isfinite(flat).all(1) | (flat.abs().amax(1) <= NO_GRADIENT))
        saturated.append(core.probs(z.detach()).amax(1) >= 1 - SATURATION)
    empty = torch.zeros(0, dtype=torch.bool, device=x.device)
    return (torch.cat(none), torch.cat(saturated)) if none else (empty, empty.clone())


# ---------------------------------------------------------------- per-image comparisons

def _call_bounds(fraction: torch.Tensor, calls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the 95% Wilson interval of a fraction of ``calls`` calls correct."""
    table = torch.tensor([wilson(s, calls) for s in range(calls + 1)], dtype=torch.float64,
                         device=fraction.device)
    idx = (fraction.double() * calls).round().long().clamp(0, calls)
    return table[idx, 0], table[idx, 1]


def clearly_below(a: torch.Tensor, b: torch.Tensor, calls: int) -> torch.Tensor:
    """Per image, whether score ``a`` is below score ``b`` beyond per-call noise: for one call
    (a deterministic predictor) a < b; for k calls, a's Wilson interval on k calls lies wholly
    below b's."""
    a, b = a.float(), b.float()
    if calls <= 1:
        return a < b
    _, a_high = _call_bounds(a, calls)
    b_low, _ = _call_bounds(b, calls)
    return a_high < b_low


def fooled_only_by(challengers: list[AttackResult], whitebox: list[AttackResult], rep: PredictorReport
                   ) -> torch.Tensor:
    """Per image, whether one of ``challengers`` fools it and none of ``whitebox`` does: its
    worst score under the challengers clearly below its worst under the white-box attacks (both
    bounded by the clean score)."""
    return clearly_below(worst_per_image(challengers, rep.clean), worst_per_image(whitebox, rep.clean),
                         rep.scoring_calls)


def _count(mask: torch.Tensor, n: int, base_rate: float, what: str) -> Check:
    return Check(int(mask.sum()), n, count_limit(n, base_rate), what)


def _is_bpda(r: AttackResult) -> bool:
    return r.attack.endswith(BPDA)


def _whitebox(results: list[AttackResult], threat: str = Threat.SEEN, norm: str | None = None) -> list[AttackResult]:
    """The white-box gradient attacks of ``threat`` (and ``norm``): gradient, on the predictor
    (real backward or BPDA), not transferred, not the defense's own."""
    return [r for r in results if r.threat == threat and r.gradient and not r.surrogate and not r.defense
            and (norm is None or r.norm == norm)]


def per_image_checks(rep: PredictorReport) -> dict[str, Check]:
    """The per-image checks whose attacks ran: gradient-free, transfer and BPDA attacks fooling
    images no white-box attack fools, the unbounded attack leaving images correct, and the
    zero-gradient and saturated-softmax signs on the clean images."""
    out: dict[str, Check] = {}
    n, seen = rep.n, _whitebox(rep.results)
    free = [r for r in rep.results if r.threat == Threat.SEEN and not r.gradient]
    if seen and free:
        out[FLAG_GRADIENT_FREE] = _count(fooled_only_by(free, seen, rep), n, BASE_RATE,
                                         "images a gradient-free attack (Square) fools and no white-box attack does")
    transfer = [r for r in rep.results if r.threat == Threat.SEEN and r.surrogate]
    if seen and transfer:
        out[FLAG_TRANSFER] = _count(fooled_only_by(transfer, seen, rep), n, BASE_RATE,
                                    "images the attack transferred from the bare classifier fools and no white-box "
                                    "attack does")
    # BPDA against the real backward pass of attacks of the same threat and norm
    groups = {(r.threat, r.norm) for r in rep.results if _is_bpda(r)}
    bpda = torch.zeros(n, dtype=torch.bool, device=rep.clean.device)
    compared = False
    for threat, norm in groups:
        members = _whitebox(rep.results, threat, norm)
        real = [r for r in members if not _is_bpda(r)]
        through = [r for r in members if _is_bpda(r)]
        if real and through:
            bpda |= fooled_only_by(through, real, rep)
            compared = True
    if compared:
        out[FLAG_BPDA] = _count(bpda, n, BASE_RATE, "images an attack through the BPDA pipeline fools and the same "
                                                    "kind of attack through the real backward pass does not")
    unbounded = [r for r in rep.results if r.family == "eps_sweep" and r.eps >= 1.0]
    if unbounded:
        left = unbounded[-1].robust.float() >= 0.5
        out[FLAG_UNBOUNDED] = _count(left, n, UNBOUNDED_BASE_RATE,
                                     "images PGD at ε = 1 (any image reachable) leaves correct on at least half "
                                     "the calls")
    correct = rep.clean.float() > 0
    if rep.no_gradient is not None:
        out[FLAG_ZERO_GRADIENT] = _count(rep.no_gradient & correct, n, ZERO_GRADIENT_BASE_RATE,
                                         "correct clean images whose input gradient of the cross-entropy is zero")
    if rep.saturated is not None:
        survived = worst_per_image(seen, rep.clean) > 0
        out[FLAG_SATURATED] = _count(rep.saturated & survived, n, BASE_RATE,
                                     f"images every white-box attack left correct whose clean top softmax "
                                     f"probability is ≥ 1 − {SATURATION:g} (cross-entropy gradients vanish)")
    return out


# ---------------------------------------------------------------- aggregate comparisons

def gap_check(higher: float, lower: float, n: int, what: str, min_gap: float = 0.0,
              higher_n: int | None = None) -> Check:
    """``higher`` accuracy above ``lower`` (both on ``n`` images unless ``higher_n`` says
    otherwise) by more than noise: count = the gap in images, limit = the gap that the upper
    end of ``lower``'s 95% Wilson interval (and ``higher``'s lower end, when it was measured on
    other images, ``higher_n``) allows, at least ``min_gap``."""
    _, lower_high = accuracy_interval(lower, n)
    higher_low = higher if higher_n is None else accuracy_interval(higher, higher_n)[0]
    if not math.isfinite(higher_low):
        higher_low = higher
    noise = (lower_high - lower) + (higher - higher_low)
    return Check(max(0, int(round((higher - lower) * n))), n, n * max(min_gap, noise), what)


def aggregate_checks(rep: PredictorReport) -> dict[str, Check]:
    """FGSM above PGD, accuracy rising with ε, CE attacks far above margin attacks."""
    out: dict[str, Check] = {}
    n = rep.n
    pgd = [r.accuracy for r in rep.results if r.family == "pgd" and not r.surrogate]
    fgsm = [r.accuracy for r in rep.results if r.family == "fgsm"]
    if pgd and fgsm:
        out[FLAG_FGSM] = gap_check(min(pgd), min(fgsm), n, "accuracy under PGD above FGSM's (images)")
    sweep = sorted((r for r in rep.results if r.family == "eps_sweep"), key=lambda r: r.eps)
    if len(sweep) > 1:
        out[FLAG_EPS] = max((gap_check(b.accuracy, a.accuracy, n, "accuracy at a larger ε of the sweep above "
                                                                 "the smaller one's (images)")
                             for a, b in zip(sweep, sweep[1:])), key=lambda c: c.count - c.limit)
    whitebox = [r for r in _whitebox(rep.results) if r.family != "fgsm"]
    ce = [r.accuracy for r in whitebox if r.attack.split("+")[0] in ("pgd_ce", "apgd_ce")]
    # untargeted margin losses only: targeted APGD is stronger than CE on sound models too
    margin = [r.accuracy for r in whitebox if r.attack.split("+")[0] in ("pgd_cw", "apgd_dlr")]
    if ce and margin:
        out[FLAG_CE] = gap_check(min(ce), min(margin), n, f"accuracy under CE attacks above margin attacks' "
                                                          f"(images; a sound model may differ by {CE_GAP:.0%})",
                                 min_gap=CE_GAP)
    return out


def proxy_check(proxy, proxy_n, worst_seen: float, n: int) -> Check | None:
    """The search's per-epoch proxy (``robust_acc`` on ``proxy_n`` validation images) above the
    final worst case over seen attacks (on ``n`` test images) beyond both intervals; None where
    either is missing."""
    if not (isinstance(proxy, (int, float)) and math.isfinite(proxy) and math.isfinite(worst_seen) and n):
        return None
    proxy_n = int(proxy_n) if isinstance(proxy_n, (int, float)) and math.isfinite(proxy_n) and proxy_n >= 1 else None
    return gap_check(float(proxy), worst_seen, n, "per-epoch proxy robust accuracy above the final worst case over "
                                                  "seen attacks (images, beyond both intervals)", higher_n=proxy_n)


def masking_checks(rep: PredictorReport) -> dict[str, Check]:
    """Every masking check that the report's attacks allow, by flag name."""
    return {**per_image_checks(rep), **aggregate_checks(rep)}


def fired(checks: dict[str, Check]) -> list[str]:
    """The names of the checks that fired, in order."""
    return [name for name, check in checks.items() if check.fired]
