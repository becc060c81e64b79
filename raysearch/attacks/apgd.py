"""Auto-PGD (Croce & Hein, ICML 2020), the gradient attacks of AutoAttack, in L∞ and L2.

Step-size-free PGD with momentum: the step starts at 2ε, the iterate moves by
x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1−α)(x_k − x_{k−1})) with α = 0.75 (α = 1 on the first
step), and at each checkpoint w_j the step of an example is halved (and it restarts from its
best point) when at most ρ = 0.75 of the steps since the last checkpoint raised its loss,
or when its step was not halved at the previous checkpoint and its best loss has not improved
since. Checkpoints are w_j = p_j·N_iter with p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06): with 100 iterations 22, 41, 57, 70, 80, 87,
93, 99. Standard settings (AutoAttack "standard"): 100 iterations, 1 restart for APGD-CE and
APGD-DLR, 9 target classes for APGD-T; EOT over 20 draws for randomized models ("rand").
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from raysearch.attacks import core
from raysearch.attacks.core import ALL

RHO = 0.75  # fraction of loss-raising steps below which the step is halved
MOMENTUM = 0.75


def checkpoints(n_iter: int) -> list[int]:
    """Iterations at which the step size is revisited. The interval lengths are whole numbers
    of iterations, as in the reference code: ⌊0.22·N⌋ first, then shorter by ⌊0.03·N⌋ each
    time down to ⌊0.06·N⌋ (at least 1 each)."""
    k, decr, k_min = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    out, at = [], k
    while at <= n_iter:
        out.append(at)
        k = max(k - decr, k_min)
        at += k
    return out


def apgd(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf",
         n_iter: int = 100, loss: str = "ce", restarts: int = 1, n_targets: int = 0,
         eot: int = 1, seed: int = 0, early_stop: bool | None = None) -> torch.Tensor:
    """APGD with ``loss`` in {"ce", "dlr"} (untargeted), or APGD-T (targeted DLR against each of
    the ``n_targets`` most likely wrong classes in turn) when ``n_targets`` > 0. Restarts and
    targets run only on the images not fooled yet. ``early_stop`` (default: when ``eot`` is 1)
    stops attacking an image once it is fooled."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"apgd: norm must be linf or l2, got {norm!r}")
    x, y = x.detach(), y.detach()
    if eps <= 0 or n_iter <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    best = x.clone()
    alive = torch.ones(len(x), dtype=torch.bool, device=x.device)
    if n_targets > 0:
        with torch.no_grad():
            ranked = core.probs(core.draws(model, x, eot)).sort(1, descending=True).indices
        # the k-th most likely class other than the true one
        ranked = torch.stack([r[r != t] for r, t in zip(ranked, y)])
        runs = [(ranked[:, k], r) for k in range(min(n_targets, ranked.shape[1])) for r in range(max(restarts, 1))]
    else:
        runs = [(None, r) for r in range(max(restarts, 1))]
    for target, _ in runs:
        idx = alive.nonzero().squeeze(1)
        if not len(idx):
            break
        x_adv, fooled = _run(model, x[idx], y[idx], eps, norm, n_iter, core.LOSSES[loss],
                             None if target is None else target[idx], eot, g,
                             eot <= 1 if early_stop is None else early_stop)
        best[idx] = x_adv
        alive[idx[fooled]] = False
    return best


def _step(x_adv, grad, step, x, eps, norm):
    if norm == "linf":
        return core.project_linf(x_adv + step * grad.sign(), x, eps)
    return core.project_l2(x_adv + step * grad / (core.l2_norm(grad) + 1e-12), x, eps)


def _project(x_adv, x, eps, norm):
    return core.project_linf(x_adv, x, eps) if norm == "linf" else core.project_l2(x_adv, x, eps)


def _run(model, x, y, eps, norm, n_iter, loss_fn, target, eot, g, early_stop):
    """One APGD run; returns (first fooling iterate, else the highest-loss point; fooled).
    With ``early_stop`` an image leaves the batch once fooled; examples do not interact, so
    the others follow the same iterates as without it. ``target``: per-image target classes
    for the targeted DLR loss (then ``loss_fn`` is unused)."""
    def loss_on(sel):
        return loss_fn if target is None else partial(core.dlr_targeted_loss, target=target[sel])

    n = len(x)
    shape = (n,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        t = core.uniform(g, x.shape, x, -1, 1)
        x_adv = (x + eps * t / t.flatten(1).abs().amax(1).view(shape)).clamp(0, 1)
    else:
        t = core.normal(g, x.shape, x)
        x_adv = (x + eps * t / (core.l2_norm(t) + 1e-12)).clamp(0, 1)
    loss, grad, p = core.loss_grad(model, x_adv, y, loss_on(ALL), eot)
    fooled = p.argmax(1) != y
    x_found = x_adv.clone()  # the first iterate that fooled the model, where one did
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    step = torch.full(shape, 2.0 * eps, device=x.device, dtype=x.dtype)
    x_prev = x_adv.clone()
    marks = set(checkpoints(n_iter))
    last_mark = 0
    history = [loss.clone()]  # loss at every iterate, from the start point
    best_at_last_mark = loss_best.clone()
    halved_at_last_mark = torch.ones(n, dtype=torch.bool, device=x.device)
    act = ALL  # every image until one is fooled (views, no copies)
    for i in range(n_iter):
        if early_stop and fooled.any():
            act = (~fooled).nonzero().squeeze(1)
            if not len(act):
                break
        with torch.no_grad():
            a = MOMENTUM if i > 0 else 1.0
            xa, x0 = x_adv[act], x[act]
            z = _step(xa, grad[act], step[act], x0, eps, norm)
            x_new = _project(xa + a * (z - xa) + (1 - a) * (xa - x_prev[act]), x0, eps, norm)
            x_prev[act] = xa
            x_adv[act] = x_new
        l_new, g_new, p = core.loss_grad(model, x_new, y[act], loss_on(act), eot)
        with torch.no_grad():
            loss[act], grad[act] = l_new, g_new
            wrong = (p.argmax(1) != y[act]) & ~fooled[act]
            hit = core.subset(act, wrong)
            x_found[hit] = x_new[wrong]
            fooled[hit] = True
            better = core.subset(act, l_new > loss_best[act])
            x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
            history.append(loss.clone())
            if i + 1 in marks:
                span = i + 1 - last_mark
                raised = sum((history[k] > history[k - 1]).float() for k in range(last_mark + 1, i + 2))
                halve = (raised <= RHO * span) | (~halved_at_last_mark & (loss_best <= best_at_last_mark))
                step[halve] /= 2.0
                x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                halved_at_last_mark, best_at_last_mark, last_mark = halve, loss_best.clone(), i + 1
    if eot > 1:
        # randomized model: the first iterate that fooled one set of draws is often marginal;
        # the point of highest EOT loss is the better bet against fresh draws
        with torch.no_grad():
            return x_best, core.predict(model, x_best, eot) != y
    # not fooled: return the highest-loss point (any point of the ball is as good for them)
    x_found[~fooled] = x_best[~fooled]
    return x_found, fooled
