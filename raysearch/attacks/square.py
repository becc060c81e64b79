"""Square Attack, L∞ (Andriushchenko et al., ECCV 2020): a score-based, gradient-free attack, the
gradient-free member of AutoAttack and the standard check for gradient masking.

Start: vertical stripes of ±ε. Each query re-draws one square window per image to ±ε per
channel and keeps it if the margin z_y − max_{j≠y} z_j drops. The window side shrinks with the
query count on the schedule of the reference implementation (p_init = 0.8 of the pixels at
first, halved at 0.1%, 0.5%, 2%, 5%, 10%, 20%, 40%, 60%, 80% of the budget). Standard budget:
5000 queries. Images stop being queried once fooled. With EOT the margin is averaged over
draws, and every image is queried to the end of the budget (``full_budget``, default on when
``eot`` > 1), since a margin just below zero for some draws is a coin flip for fresh ones. The
evaluation queries a randomized predictor with one call per query and the full budget, and
scores the result with EOT.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from raysearch.attacks import core

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
             (6000, 128), (8000, 256))  # (progress in 1/10000 of the budget, divisor of p_init)


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of pixels in the window at query ``it`` of ``n_queries``."""
    progress = int(it / n_queries * 10000)
    div = 512
    for limit, d in _SCHEDULE:
        if progress <= limit:
            div = d
            break
    return p_init / div


def _margin(model, x, y, eot):
    return -core.margin_loss(core.draws(model, x, eot), y).mean(0)


@torch.no_grad()
def square(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, n_queries: int = 5000,
           p_init: float = 0.8, eot: int = 1, seed: int = 0, full_budget: bool | None = None) -> torch.Tensor:
    x, y = x.detach(), y.detach()
    full_budget = eot > 1 if full_budget is None else full_budget
    if eps <= 0 or n_queries <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    n, c, h, w = x.shape
    sign = lambda shape: torch.randint(0, 2, shape, generator=g, device=x.device).to(x.dtype) * 2 - 1  # noqa: E731
    x_best = (x + eps * sign((n, c, 1, w))).clamp(0, 1)
    margin = _margin(model, x_best, y, eot)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    # the images still to fool, kept as compact tensors; re-compacted only when one is fooled
    idx = torch.arange(n, device=x.device) if full_budget else (margin > 0).nonzero().squeeze(1)
    xc, xb, yc, mc = x[idx], x_best[idx], y[idx], margin[idx]
    for it in range(n_queries):
        if not len(idx):
            break
        m = len(idx)
        s = int(round(math.sqrt(p_selection(p_init, it, n_queries) * h * w)))
        s = min(max(s, 1), h - 1)
        vh = torch.randint(0, h - s + 1, (m, 1), generator=g, device=x.device)
        vw = torch.randint(0, w - s + 1, (m, 1), generator=g, device=x.device)
        in_h = (rows >= vh) & (rows < vh + s)
        in_w = (cols >= vw) & (cols < vw + s)
        window = in_h[:, None, :, None] & in_w[:, None, None, :]
        delta = eps * sign((m, c, 1, 1))
        x_new = torch.where(window, (xc + delta).clamp(0, 1), xb)
        # a window that already holds these values would waste the query: flip its signs
        same = (x_new - xb).abs().flatten(1).amax(1) < 1e-7
        if same.any():
            x_new = torch.where(same.view(-1, 1, 1, 1) & window, (xc - delta).clamp(0, 1), x_new)
        new_margin = _margin(model, x_new, yc, eot)
        better = new_margin < mc
        xb = torch.where(better.view(-1, 1, 1, 1), x_new, xb)
        mc = torch.where(better, new_margin, mc)
        # a randomized model is queried to the end: a margin just below 0 for these draws is a
        # coin flip for fresh ones, so the margin keeps being pushed down
        done = torch.zeros_like(better) if full_budget else (mc <= 0)
        if done.any():
            x_best[idx], margin[idx] = xb, mc
            keep = ~done
            idx, xc, xb, yc, mc = idx[keep], xc[keep], xb[keep], yc[keep], mc[keep]
    if len(idx):
        x_best[idx] = xb
    return x_best
