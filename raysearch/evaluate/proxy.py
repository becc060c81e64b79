"""The cheap per-epoch evaluation that steers the search: clean accuracy and the per-image worst
case of L∞ PGD with cross-entropy, PGD with the CW margin loss and APGD-T (targeted DLR) at
ε_eval, on a fixed validation subset.

Why these attacks and both gradients: a proxy that runs cross-entropy PGD alone rewards what the
search must not drift toward. Label smoothing (rvs's and atld's recipe) saturates the softmax,
so the cross-entropy gradient vanishes while the margin loss still points across the boundary;
a test-time step that clips its input (atld's IMT) zeroes the real gradient, while its BPDA
pipeline (the step taken as the identity in the backward pass) does not. And the final suite's
worst case is a per-image union over many attacks, of which targeted APGD (one run per wrong
class) fools the most images that the untargeted runs miss: without it the proxy stood 5–9
points above the final worst case at the digits defaults of pgd_at, trades, rvs and ijsat, and
1–4 points above with it, inside the final number's 95% interval (``bench/proxy_gap.py``). So every image is attacked with the registered ``pgd_cw``,
``pgd_ce`` and ``apgd_t`` of the final suite (``raysearch.attacks``; PGD: random start, step
2.5·ε/steps, one restart; APGD-T: its 9 most likely wrong classes in turn), each with the
proxy's steps, through the predictor's real backward pass and, where it has one, through its
BPDA pipeline, and keeps its worst score. A randomized predictor is attacked as the final suite
attacks it (AutoAttack's rand protocol): APGD-T is not run, the EOT draws stand in for restarts.

Scoring is per call, as the final suite scores (``raysearch.attacks.core.score_calls``): an
image scores the fraction of ``pred.calls(eot)`` fresh calls that answer correctly, clean and
on each attack's image (one call for a deterministic predictor), and its robust value is the
minimum of its clean score and every attacked score. Randomized predictors are attacked with
EOT gradients over the same number of calls. An attack runs only on the images whose worst
score is still above 0, which changes no result (a minimum at 0 stays 0) and makes the later
attacks cheap on weak models.

The proxy draws no number from the training's random streams: attacks have their own seeded
generators, and a randomized predictor's own draws come from the global streams forked and
seeded for the evaluation, then restored, so training is the same whether or how often the
proxy runs (``--eval-every``). This is a proxy for the search; the full suite runs after it
(``raysearch.evaluate``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple

import torch

from raysearch.attacks import ATTACKS, AttackSpec, apgd, core, memory, min_classes
from raysearch.evaluate.suite import BPDA, settings
from trainables.base import Predictor

# the registry entries the proxy runs (margin first: on most models it fools more images, so
# fewer are left for the next attacks; the targeted runs, the costliest, last)
PROXY_ATTACKS: tuple[str, ...] = ("pgd_cw", "pgd_ce", "apgd_t")
RESTARTS = 1  # per attack and target; for a randomized predictor the EOT draws stand in for restarts


class ProxyRun(NamedTuple):
    """One attack of the proxy against one model: the predictor or its BPDA pipeline."""

    name: str  # registry name, BPDA appended for the BPDA pipeline
    attack: AttackSpec
    target: Callable


class ProxyScores(NamedTuple):
    """Per image: the fraction of scoring calls correct clean, and the worst of that and every
    attacked fraction (for a deterministic predictor 0 or 1)."""

    clean: torch.Tensor
    robust: torch.Tensor


def proxy_runs(pred: Predictor, classes: int, attacks: tuple[str, ...] = PROXY_ATTACKS) -> list[ProxyRun]:
    """The proxy's attacks against ``pred`` on a data set of ``classes`` classes: each through
    the real backward pass, then each through the BPDA pipeline where the predictor has one.
    Left out: attacks the final suite does not run on a randomized predictor, and attacks whose
    loss needs more classes."""
    names = [n for n in attacks if not (pred.randomized and ATTACKS[n].randomized is None)
             and classes >= min_classes(ATTACKS[n])]
    runs = [ProxyRun(name, ATTACKS[name], pred.model) for name in names]
    if pred.bpda is not None:
        runs += [ProxyRun(name + BPDA, ATTACKS[name], pred.bpda) for name in names]
    return runs


def run_params(attack: AttackSpec, steps: int) -> dict:
    """An attack's registered parameters with the proxy's ``steps`` (PGD's steps, APGD's
    iterations) and one restart."""
    if attack.fn is apgd:
        return {**attack.params, "n_iter": steps, "restarts": RESTARTS}
    return {**attack.params, "steps": steps, "restarts": RESTARTS}


def runs_per_image(pred: Predictor, classes: int, attacks: tuple[str, ...] = PROXY_ATTACKS) -> int:
    """Attack runs from a fresh start an image may get from the proxy: every run's restarts
    × targets, as the final suite counts them (``raysearch.evaluate.suite.settings``)."""
    return sum(settings(run.attack, params={"restarts": RESTARTS}, classes=classes)[1]
               for run in proxy_runs(pred, classes, attacks))


def proxy_scores(pred: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, eot: int,
                 batch_size: int = 256, seed: int = 0, attacks: tuple[str, ...] = PROXY_ATTACKS,
                 classes: int | None = None) -> ProxyScores:
    """Per-image clean and worst-case scores (see the module docstring). ``eot``: random draws
    per gradient; a randomized predictor is called ``pred.calls(eot)`` times per gradient and as
    many times per score. ``attacks``: registry names (the proxy's by default). ``classes``:
    the data set's (default: the width of the predictor's logits, one more call)."""
    calls = pred.calls(eot)
    clean_parts, robust_parts = [], []
    with _seeded_draws(x.device, seed):
        if classes is None and len(x):
            with torch.no_grad():
                classes = pred.model(x[:1]).shape[-1]
        runs = proxy_runs(pred, classes or 0, attacks)
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            clean = core.fraction_correct(pred.model, xb, yb, calls)
            worst = clean.clone()
            if eps > 0:  # at ε 0 every attacked image is the clean one
                for r, run in enumerate(runs):
                    alive = (worst > 0).nonzero().squeeze(1)
                    if not len(alive):
                        break
                    params = run_params(run.attack, steps)
                    with torch.enable_grad():
                        x_adv = run.attack.fn(run.target, xb[alive], yb[alive], eps, eot=calls,
                                              seed=(seed * 100003 + i) * 16 + r, **params)
                    attacked = core.fraction_correct(pred.model, x_adv, yb[alive], calls)
                    worst[alive] = torch.minimum(worst[alive], attacked)
            clean_parts.append(clean)
            robust_parts.append(worst)
    if not clean_parts:
        empty = torch.zeros(0, device=x.device)
        return ProxyScores(empty, empty)
    return ProxyScores(torch.cat(clean_parts), torch.cat(robust_parts))


def proxy_eval(pred: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, eot: int,
               batch_size: int = 256, seed: int = 0, attacks: tuple[str, ...] = PROXY_ATTACKS,
               eval_memory: str = "", classes: int | None = None) -> tuple[float, float, float]:
    """(clean, robust, n) summed over the images, so that workers' shards add up: per image the
    fraction of scoring calls correct clean, and its worst score over clean and every proxy
    attack (``proxy_scores``); for a deterministic predictor the counts of correct images.
    On a GPU, or with an ``eval_memory`` budget (``--eval-memory``), the image-calls stacked per
    forward/backward follow the memory plan (``raysearch.attacks.memory``); on the CPU without
    a budget the probe is skipped (its tracker costs seconds of imports per worker)."""
    if x.device.type == "cuda" or eval_memory:
        with memory.planned(pred, x[:1], eval_memory, held=batch_size):
            s = proxy_scores(pred, x, y, eps, steps, eot, batch_size, seed, attacks, classes)
    else:
        s = proxy_scores(pred, x, y, eps, steps, eot, batch_size, seed, attacks, classes)
    return s.clean.sum().item(), s.robust.sum().item(), float(len(y))


@contextlib.contextmanager
def _seeded_draws(device: torch.device, seed: int):
    """The global random streams of the CPU and of ``device`` forked, seeded with ``seed`` for
    the block (a randomized predictor draws from them), and restored after it."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def proxy_due(epoch: int, epochs: int, every: int) -> bool:
    """Whether the proxy runs after ``epoch`` (counted from 1) of ``epochs``: every ``every``
    epochs and always after the last, whose values the search is told."""
    return epoch % max(every, 1) == 0 or epoch >= epochs


def default_eval_every(randomized: bool, epochs: int, scheduler: str = "none") -> int:
    """``--eval-every``'s default. With an early-stopping scheduler every epoch: it compares
    trials on every epoch's values. Otherwise only the last epoch's values steer Optuna and the
    epochs before feed progress and curves: a deterministic defense is measured every
    ⌈epochs/3⌉ epochs (three proxies per trial: the targeted runs make a proxy cost about 1.5 of
    pgd_at's digits epochs, bench/proxy_cost.py), a randomized one after the last epoch only
    (every attack step multiplies by its EOT draws)."""
    if scheduler != "none":
        return 1
    return max(epochs, 1) if randomized else max(math.ceil(epochs / 3), 1)
