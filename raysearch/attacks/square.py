"""Square Attack, L∞ (Andriushchenko et al., ECCV 2020): a score-based, gradient-free attack, the
gradient-free member of AutoAttack and the standard check for gradient masking.

Start: vertical stripes of ±ε. Each query re-draws one square window per image to ±ε per
channel (a proposal) and keeps it if the margin z_y − max_{j≠y} z_j drops. The window side
shrinks with the query count on the schedule of the reference implementation (p_init = 0.8 of
the pixels at first, halved at 0.1%, 0.5%, 2%, 5%, 10%, 20%, 40%, 60%, 80% of the budget).
Standard budget: 5000 queries; ``n_queries`` counts proposals per image, and a call below is
one forward pass of one image.

A deterministic model (``eot`` 1, ``full_budget`` off) is called once per image for the start
and once per query of an image not yet fooled (at most 1 + n_queries calls per image): the
incumbent's margin is remembered, and an image stops being queried once fooled.

A randomized model (``eot`` > 1 or ``full_budget``; ``eot`` draws averaged per measurement)
gives another margin at every call, so a remembered margin is the lowest of earlier noisy
draws, which a proposal beats only on a lucky draw. Instead each query measures the incumbent
again on the very draws the proposal then sees: torch's global random streams (which a torch
model draws from) are seeded from the attack's generator for the attack's duration and rewound
between the two forward passes, and the caller's streams are restored at the end, so the
attack stays a pure function of its seed. The proposal is kept if its margin is below the
incumbent's on those draws. Cost: 2·eot calls per image for the start (measured twice, to learn
whether the draws replay) and 2·eot per query, 2·eot·(1 + n_queries) in all. A model whose
draws do not replay (its own generator, another library's randomness) keeps the remembered
margin: eot calls per query, 2·eot + eot·n_queries in all. With ``full_budget`` (default on when
``eot`` > 1) every image is queried to the end of the budget, since a margin just below zero
for some draws is a coin flip for fresh ones. The evaluation queries a randomized predictor with
``eot`` 1 and the full budget, and scores the result with fresh draws.
"""
from __future__ import annotations

import contextlib
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


def window_side(p_init: float, it: int, n_queries: int, h: int, w: int) -> int:
    """Side (pixels) of the window re-drawn at query ``it``: 1 to h − 1."""
    side = int(round(math.sqrt(p_selection(p_init, it, n_queries) * h * w)))
    return min(max(side, 1), h - 1)


def _signs(g: torch.Generator, shape, like: torch.Tensor) -> torch.Tensor:
    """Uniform ±1 of ``like``'s dtype and device."""
    return torch.randint(0, 2, shape, generator=g, device=like.device).to(like.dtype) * 2 - 1


def start(g: torch.Generator, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The starting point: vertical stripes of ±ε per channel, clipped to [0, 1]."""
    n, c, _, w = x.shape
    return (x + eps * _signs(g, (n, c, 1, w), x)).clamp(0, 1)


def propose(g: torch.Generator, x: torch.Tensor, x_best: torch.Tensor, eps: float, side: int) -> torch.Tensor:
    """``x_best`` with one random window of ``side`` pixels per image set to x ± ε (one sign per
    channel), clipped to [0, 1]; a window that already holds these values would waste the query,
    so its signs are flipped."""
    m, c, h, w = x.shape
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    vh = torch.randint(0, h - side + 1, (m, 1), generator=g, device=x.device)
    vw = torch.randint(0, w - side + 1, (m, 1), generator=g, device=x.device)
    in_h = (rows >= vh) & (rows < vh + side)
    in_w = (cols >= vw) & (cols < vw + side)
    window = in_h[:, None, :, None] & in_w[:, None, None, :]
    delta = eps * _signs(g, (m, c, 1, 1), x)
    x_new = torch.where(window, (x + delta).clamp(0, 1), x_best)
    same = (x_new - x_best).abs().flatten(1).amax(1) < 1e-7
    if same.any():
        x_new = torch.where(same.view(-1, 1, 1, 1) & window, (x - delta).clamp(0, 1), x_new)
    return x_new


def _margin(model, x, y, eot):
    return -core.margin_loss(core.draws(model, x, eot), y).mean(0)


def _rng_state(device: torch.device) -> tuple:
    """The global random streams a model on ``device`` draws from: the CPU's and the device's own."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _seeded_global_rng(device: torch.device, seed: int):
    """The global random streams seeded from the attack for its duration, the caller's restored
    after: the model's draws follow the attack's seed and the caller's stream is left as it was."""
    saved = _rng_state(device)
    cuda = torch.Generator(device=device).manual_seed(seed).get_state() if device.type == "cuda" else None
    _set_rng_state(device, (torch.Generator().manual_seed(seed).get_state(), cuda))
    try:
        yield
    finally:
        _set_rng_state(device, saved)


def _replays(model, x, y, eot) -> tuple[torch.Tensor, bool]:
    """(margins of x, whether a second forward pass from the same random state sees the same
    draws: true for a model that draws from torch's global streams)."""
    state = _rng_state(x.device)
    first = _margin(model, x, y, eot)
    _set_rng_state(x.device, state)
    again = _margin(model, x, y, eot)
    return first, torch.allclose(first, again, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def square(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, n_queries: int = 5000,
           p_init: float = 0.8, eot: int = 1, seed: int = 0, full_budget: bool | None = None) -> torch.Tensor:
    """Images within ε of x (L∞) and in [0, 1] that lower the margin; see the module docstring for
    the rule against a randomized model and the calls it costs."""
    x, y = x.detach(), y.detach()
    full_budget = eot > 1 if full_budget is None else full_budget
    if eps <= 0 or n_queries <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    if not (full_budget or eot > 1):
        return _search(model, x, y, eps, g, n_queries, p_init, eot, full_budget, replayed=False)
    with _seeded_global_rng(x.device, int(torch.randint(0, 2 ** 62, (), generator=g))):
        return _search(model, x, y, eps, g, n_queries, p_init, eot, full_budget, replayed=None)


def _search(model, x, y, eps, g, n_queries, p_init, eot, full_budget, replayed) -> torch.Tensor:
    """The query loop; ``replayed`` None: find out whether the model's draws can be replayed."""
    n, _, h, w = x.shape
    x_best = start(g, x, eps)
    if replayed is None:
        margin, replayed = _replays(model, x_best, y, eot)
    else:
        margin = _margin(model, x_best, y, eot)
    # the images still to fool, kept as compact tensors; re-compacted only when one is fooled
    idx = torch.arange(n, device=x.device) if full_budget else (margin > 0).nonzero().squeeze(1)
    xc, xb, yc, mc = x[idx], x_best[idx], y[idx], margin[idx]
    for it in range(n_queries):
        if not len(idx):
            break
        x_new = propose(g, xc, xb, eps, window_side(p_init, it, n_queries, h, w))
        if replayed:  # the incumbent on the draws the proposal is about to see
            state = _rng_state(x.device)
            mc = _margin(model, xb, yc, eot)
            _set_rng_state(x.device, state)
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
