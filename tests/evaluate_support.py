"""Shared pieces of the final-evaluation tests (tests/test_evaluate_*.py): cheap attack
settings and wrappers that mask gradients or add randomness. The trained models and the
finished experiment these tests attack are fixtures in conftest.py."""
from __future__ import annotations

import dataclasses
from types import MappingProxyType

import torch
from torch import nn

from raysearch import attacks

QUICK = ["fgsm", "pgd_ce", "pgd_l2", "jpeg", "gaussian_noise_s3", "contrast_s5", "pgd_eps_x2",
         "pgd_unbounded"]


def cheap(name: str, **params) -> attacks.AttackSpec:
    """A registered attack with smaller settings, for mechanism tests of the evaluation (the
    reported suite always uses the registry's settings)."""
    a = attacks.ATTACKS[name]
    rand = None if a.randomized is None else MappingProxyType({**a.randomized, **params})
    return dataclasses.replace(a, params=MappingProxyType({**a.params, **params}), randomized=rand)


PGD = cheap("pgd_ce", steps=20, restarts=1)
SQUARE = cheap("square", n_queries=300)
SWEEP = [cheap(n, steps=20) for n in ("pgd_eps_x1", "pgd_eps_x2", "pgd_unbounded")]


class Noisy(nn.Module):
    def __init__(self, model, sigma):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class Quantize(nn.Module):
    """A non-differentiable preprocessing (zero gradient almost everywhere) before the model;
    with ``straight_through`` the backward pass is the identity (BPDA)."""

    def __init__(self, model, levels=4, straight_through=False):
        super().__init__()
        self.model, self.levels, self.st = model, levels, straight_through

    def forward(self, x):
        q = torch.round(x * self.levels) / self.levels
        if self.st:
            q = x + (q - x).detach()
        return self.model(q)


class Scaled(nn.Module):
    """Logits multiplied by a large factor: the softmax saturates, so the cross-entropy gradient
    underflows to zero for confidently classified images, while margin gradients survive."""

    def __init__(self, model, factor=1e4):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


class Threshold(nn.Module):
    """Two classes: 1 when some pixel reaches ``level``, else 0 (logits ±4, so never saturated).
    ``masked``: a hard step, whose input gradient is zero everywhere: PGD gets no direction (it
    stays at its random start), Square still finds the step. Otherwise a steep sigmoid of the
    largest pixel, 0.01 below ``level``: PGD climbs to the same images Square finds."""

    def __init__(self, level: float, masked: bool):
        super().__init__()
        self.level, self.masked = level, masked

    def forward(self, x):
        flat = x.flatten(1)
        if self.masked:
            hit = (flat >= self.level).any(1).float() + 0 * flat.sum(1)  # in the graph, gradient 0
        else:
            hit = torch.sigmoid(50 * (flat.amax(1) - (self.level - 0.01)))
        logit = 4 * (2 * hit - 1)
        return torch.stack([-logit, logit], 1)


def threshold_images(n: int, near: int, eps: float, side: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` constant grey images of class 0 for ``Threshold(level=0.8 + eps)``: the first
    ``near`` at 0.8 (one pixel moved by ε reaches the level), the others at 0.5 (out of reach)."""
    x = torch.full((n, 1, side, side), 0.5)
    x[:near] = 0.8
    return x, torch.zeros(n, dtype=torch.long)
