"""Projected gradient descent (Madry et al., ICLR 2018) in L∞ and L2, with restarts, a choice of
loss (cross-entropy or the CW margin), and EOT; and FGSM (Goodfellow et al., 2015).

Each restart starts at a random point of the ε-ball and takes ``steps`` steps of size
``step_factor·ε/steps`` (2.5: the step rule of Madry et al., enough to cross the ball twice).
Restarts run only on the images no earlier restart fooled, and every iterate that fools the
model is kept, so a restart never undoes an earlier success. Against a randomized model
(``eot`` > 1) the iterate of highest EOT loss is returned instead of the first one that fooled
a set of draws, which is often a marginal point that fresh draws classify correctly. Expect robust accuracy to fall
with steps and restarts and to reach ~0% on an undefended model at a large enough ε.
"""
from __future__ import annotations

from typing import Callable

import torch

from raysearch.attacks import core
from raysearch.attacks.core import ALL


def pgd(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
        steps: int = 50, restarts: int = 1, step_factor: float = 2.5, loss: str = "ce",
        random_start: bool = True, eot: int = 1, seed: int = 0, early_stop: bool | None = None) -> torch.Tensor:
    """Adversarial images within the ``norm`` ε-ball around x, in [0, 1]. ``early_stop``
    (default: when ``eot`` is 1) stops attacking an image once it is fooled; its fooling
    iterate is kept, so for a deterministic model the result is the same, only cheaper."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"pgd: norm must be linf or l2, got {norm!r}")
    x, y = x.detach(), y.detach()
    if eps <= 0 or steps <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    loss_fn = core.LOSSES[loss]
    best = x.clone()
    alive = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for r in range(max(restarts, 1)):
        idx = alive.nonzero().squeeze(1)
        if not len(idx):
            break
        # the last run's final iterate needs no check: no restart depends on it
        x_adv, fooled = _run(model, x[idx], y[idx], eps, norm, steps, step_factor * eps / steps,
                             loss_fn, random_start, eot, g, eot <= 1 if early_stop is None else early_stop,
                             check_last=r < max(restarts, 1) - 1)
        best[idx] = x_adv
        alive[idx[fooled]] = False
    return best


def _run(model, x, y, eps, norm, steps, alpha, loss_fn, random_start, eot, g, early_stop, check_last=True):
    """One PGD run; returns (first fooling iterate, else the last one; fooled mask, where the
    last iterate is checked only with ``check_last``). With
    ``early_stop`` an image leaves the batch once fooled (the others' iterates are unchanged:
    examples do not interact in eval mode)."""
    if random_start:
        if norm == "linf":
            x_adv = (x + core.uniform(g, x.shape, x, -eps, eps)).clamp(0, 1)
        else:
            d = core.normal(g, x.shape, x)
            r = core.uniform(g, (len(x),) + (1,) * (x.dim() - 1), x)  # radius fraction
            x_adv = (x + eps * r * d / (core.l2_norm(d) + 1e-12)).clamp(0, 1)
    else:
        x_adv = x.clone()
    found = x_adv.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    # randomized model (eot > 1): a first "fooling" iterate is often a marginal point that fresh
    # draws classify correctly, so return the iterate of highest EOT loss instead
    max_loss = eot > 1
    top, top_loss = x_adv.clone(), torch.full((len(x),), -torch.inf, device=x.device)
    act = ALL  # the images still attacked: every image until one is fooled (views, no copies)
    for _ in range(steps):
        if early_stop and fooled.any():
            act = (~fooled).nonzero().squeeze(1)
            if not len(act):
                break
        xa = x_adv[act]
        loss, grad, p = core.loss_grad(model, xa, y[act], loss_fn, eot)
        with torch.no_grad():
            if max_loss:
                up = loss > top_loss[act]
                top[core.subset(act, up)], top_loss[core.subset(act, up)] = xa[up], loss[up]
            wrong = (p.argmax(1) != y[act]) & ~fooled[act]
            if act is ALL:  # a select instead of a masked copy: no host sync on a GPU
                found = torch.where(wrong.view(-1, *([1] * (x.dim() - 1))), xa, found)
                fooled |= wrong
            else:
                found[act[wrong]] = xa[wrong]
                fooled[act[wrong]] = True
            if norm == "linf":
                x_new = core.project_linf(xa + alpha * grad.sign(), x[act], eps)
            else:
                x_new = core.project_l2(xa + alpha * grad / (core.l2_norm(grad) + 1e-12), x[act], eps)
            if act is ALL:
                x_adv = x_new
            else:
                x_adv[act] = x_new
    with torch.no_grad():
        if max_loss:
            loss = loss_fn(core.draws(model, x_adv, eot), y).mean(0)
            up = loss > top_loss
            top[up] = x_adv[up]
            return top, core.predict(model, top, eot) != y
        rest = (~fooled).nonzero().squeeze(1)
        found[rest] = x_adv[rest]
        if len(rest) and check_last:
            fooled[rest] = core.predict(model, x_adv[rest], eot) != y[rest]
    return found, fooled


def fgsm(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, loss: str = "ce",
         eot: int = 1, seed: int = 0) -> torch.Tensor:
    """One signed-gradient step of size ε from the clean image (no random start). Used as a
    gradient-masking check: a single step must not beat many."""
    x, y = x.detach(), y.detach()
    if eps <= 0 or not len(x):
        return x.clone()
    _, grad, _ = core.loss_grad(model, x, y, core.LOSSES[loss], eot)
    return core.project_linf(x + eps * grad.sign(), x, eps)
