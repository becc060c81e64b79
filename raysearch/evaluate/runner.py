"""Running the suite on one predictor: the clean score, every planned attack in batches with
its seed, EOT for randomized predictors, the defense's own attacks, then the aggregates and
the masking checks; last the robustness curve (the seen attacks at further radii), so that
nothing at ε_eval depends on it. Produces a ``PredictorReport``; writes nothing.

Scoring is per call (``raysearch.attacks.core.score_calls``): each image scores the fraction of
``scoring_calls(pred, eot)`` fresh calls that answer correctly, clean and on each attack's
image, and its value under an attack is min(clean score, attacked score), the clean image
being inside every ball. Only images with a clean score above 0 (or a correct clean vote) are
attacked. A deterministic predictor is scored on one call, as before.

A run that computes what an earlier one did (``AttackRun.key``: on a randomized predictor
``pgd_ce`` and the ε-sweep's ``pgd_eps_x1`` are both PGD-50 with one restart and cross-entropy)
is not repeated: its row carries the earlier run's per-image scores and 0 seconds.

Before any attack, the clean images' input gradients and softmax outputs are measured on the
real predictor for the zero-gradient and saturated-softmax checks (one EOT gradient per image);
after the suite, every masking check whose attacks ran (``checks.masking_checks``)."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterable

import torch

from raysearch.attacks import AttackSpec, core, memory
from raysearch.evaluate import checks
from raysearch.evaluate.aggregates import aggregate, aggregate_curve
from raysearch.evaluate.results import UNKNOWN, AttackResult, PredictorReport
from raysearch.evaluate.suite import (DEFAULT_EOT, DEFENSE, AttackRun, EvalError, attack_runs, curve_plan,
                                      defense_variants, expand_attacks)
from raysearch.schema import Threat, curve_attack
from trainables.base import DataSpec, Predictor

log = logging.getLogger(__package__)  # "raysearch.evaluate": the name the CLI's warnings carry
MIN_SCORING_CALLS = 20  # fewest fresh calls that score each image of a randomized predictor


def scoring_calls(pred: Predictor, eot: int) -> int:
    """Fresh calls that score each image: max(MIN_SCORING_CALLS, the calls of an EOT budget of
    ``eot`` draws) for a randomized predictor, 1 for a deterministic one."""
    return max(MIN_SCORING_CALLS, pred.calls(eot)) if pred.randomized else 1


def _attack_images(fn: Callable, model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float,
                   eot: int, seed: int, batch_size: int, max_batch: int = core.MAX_BATCH) -> torch.Tensor:
    with core.batch_limit(max_batch):
        out = [fn(model, x[i:i + batch_size], y[i:i + batch_size], eps, eot=eot, seed=seed * 100003 + i)
               for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else x.clone()


def evaluate_predictor(pred: Predictor, x: torch.Tensor, y: torch.Tensor, spec: DataSpec, *,
                       eps_eval: float | None = None, attacks: Iterable[str | AttackSpec] | None = None,
                       eot: int = DEFAULT_EOT, seed: int = 0, surrogate: Callable | None = None,
                       extra: dict[str, Callable] | None = None, batch_size: int = 500,
                       progress: Callable[[str], None] | None = None,
                       eps_list: Iterable[float] = (), eval_memory: str | int | None = None) -> PredictorReport:
    """Run the suite on one predictor. ``surrogate``: the bare classifier for transfer attacks
    (skipped when absent or when it is the predictor itself). ``extra``: the defense's own
    attacks, ``fn(model, x, y, eps) -> x_adv``, run at ε_eval as unseen attacks. ``eps_list``:
    L∞ radii of the robustness curve; the suite's seen attacks run again at each one other
    than ε_eval (each radius costs one more seen suite). ``eval_memory``: the memory budget
    (``raysearch.attacks.memory``; default: the device's free memory, a quarter of the RAM on
    CPU) from which the image-calls per forward pass are planned."""
    if eot < 1:
        raise EvalError(f"eot must be >= 1, got {eot}")
    suite, _ = expand_attacks(attacks)
    eps_eval = spec.eps_eval if eps_eval is None else float(eps_eval)
    curve_suite, radii = curve_plan(suite, eps_list, eps_eval)
    calls = pred.calls(eot)  # per gradient; each averages pred.draws_per_call draws
    scored = scoring_calls(pred, eot)
    if pred.randomized and eot < DEFAULT_EOT:
        log.warning("randomized predictor attacked with EOT %d < %d draws: gradients are "
                    "noisier than the standard protocol", eot, DEFAULT_EOT)
    model = pred.model
    chunk = memory.plan_chunk(pred, x, eval_memory, held=min(batch_size, len(x))) if len(x) else core.MAX_BATCH
    clean, clean_vote = core.score_calls(model, x, y, scored, max_batch=chunk)
    rep = PredictorReport(len(y), clean, pred.randomized, pred.draws(eot), draws_per_call=pred.draws_per_call,
                          eps_eval=eps_eval, scoring_calls=scored,
                          clean_ensemble=clean_vote if pred.randomized else None)
    if not pred.randomized and checks.randomness_leak(model, x[: min(len(x), 64)]):
        rep.flags.append(checks.FLAG_RANDOM)
    with core.batch_limit(chunk):
        rep.no_gradient, rep.saturated = checks.gradient_signs(model, x, y, calls, batch_size)
    idx = ((clean > 0) | clean_vote).nonzero().squeeze(1)
    xc, yc = x[idx], y[idx]

    def score(x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per image of the set: min(clean, attacked) per-call score; for a randomized predictor
        also whether the vote is correct clean and attacked (None otherwise)."""
        robust, vote = torch.zeros_like(clean), torch.zeros_like(clean_vote)
        if len(idx):
            attacked = core.score_calls(model, x_adv, yc, scored, max_batch=chunk)
            robust[idx] = torch.minimum(clean[idx], attacked.fraction)
            vote[idx] = clean_vote[idx] & attacked.ensemble
        return robust, vote if pred.randomized else None

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    done: dict[tuple, AttackResult] = {}

    def run_attack(run: AttackRun) -> AttackResult:
        attack = run.attack
        same = done.get(run.key)
        if same is not None:  # this very attack ran under another name: its images, no seconds
            return dataclasses.replace(same, attack=run.name, family=attack.family, threat=attack.threat,
                                       seconds=0.0)
        t0 = time.perf_counter()
        x_adv = _attack_images(run, run.target, xc, yc, run.eps, run.calls, seed, batch_size, chunk)
        checks.check_budget(attack, xc, x_adv, run.eps)
        robust, vote = score(x_adv)
        iterations, restarts, queries = run.settings
        result = AttackResult(run.name, attack.family, attack.threat, attack.norm, run.eps, robust, rep.eot,
                              time.perf_counter() - t0, attack.gradient, attack.surrogate, scored, vote,
                              iterations=iterations, restarts=restarts, queries=queries)
        done[run.key] = result
        return result

    for run in attack_runs(suite, pred, spec, eps_eval, surrogate, calls):
        res = run_attack(run)
        rep.results.append(res)
        say(f"{res.attack:22s} acc {res.accuracy:.3f}  ({res.seconds:.1f} s)")
    for name, fn in (extra or {}).items():
        for suffix, target in defense_variants(pred):
            target = core.MeanOfDraws(target, calls) if calls > 1 else target
            t0 = time.perf_counter()
            x_adv = _attack_images(lambda m, xb, yb, e, eot, seed: fn(m, xb, yb, e), target, xc, yc,
                                   eps_eval, 1, seed, batch_size, chunk)
            checks.check_range(name, xc, x_adv)
            robust, vote = score(x_adv)
            res = AttackResult(name + suffix, name, Threat.UNSEEN, getattr(fn, "norm", DEFENSE),
                               float(getattr(fn, "eps", eps_eval)), robust, rep.eot, time.perf_counter() - t0,
                               scoring_calls=scored, ensemble=vote, iterations=UNKNOWN, restarts=UNKNOWN,
                               queries=UNKNOWN, defense=True)
            rep.results.append(res)
            say(f"{res.attack:22s} acc {res.accuracy:.3f}  ({res.seconds:.1f} s)")
    aggregate(rep)
    rep.checks = checks.masking_checks(rep)
    rep.flags += checks.fired(rep.checks)
    for radius in radii:
        results = rep.curve_results.setdefault(radius, [])
        for run in attack_runs(curve_suite, pred, spec, radius, surrogate, calls):
            res = run_attack(run)
            results.append(res)
            say(f"{curve_attack(res.attack, radius):22s} acc {res.accuracy:.3f}  ({res.seconds:.1f} s)")
    aggregate_curve(rep)
    return rep
