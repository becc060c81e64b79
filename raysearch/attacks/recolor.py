"""Functional colour attack in the style of ReColorAdv (Laidlaw & Feizi, NeurIPS 2019).

Every pixel's colour c is mapped to c + δ(c), where δ is one smooth function of colour per
image (not of position): a grid of G points along each colour axis (G^C cells; a tone curve
for grey images) interpolated (tri)linearly, with every channel of δ bounded by ε, so no pixel
channel moves by more than ε and pixels of equal colour move together. A smoothness penalty
on neighbouring grid values keeps the mapping regular. Maximizes cross-entropy with signed
steps from a random start. Expect an L∞ model to resist it about as much as an L∞ attack of
the same ε, often more, since the attack cannot target single pixels.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional

from raysearch.attacks import core


def apply_colour_map(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x (N×C×H×W in [0, 1]) mapped through ``delta``: N×C×G (C = 1) or N×3×G×G×G (C = 3,
    axes ordered blue, green, red so that grid_sample's (x, y, z) = (r, g, b))."""
    n, c, h, w = x.shape
    coords = x * 2 - 1
    if c == 1:
        grid = torch.stack([coords[:, 0], torch.zeros_like(coords[:, 0])], -1)  # N×H×W×2
        shift = functional.grid_sample(delta[:, :, None, :], grid, mode="bilinear", align_corners=True)
    elif c == 3:
        grid = coords.permute(0, 2, 3, 1)[:, None]  # N×1×H×W×3 (r, g, b)
        shift = functional.grid_sample(delta, grid, mode="bilinear", align_corners=True)[:, :, 0]
    else:
        raise ValueError(f"recolor supports 1 or 3 channels, got {c}")
    return (x + shift).clamp(0, 1)


def grid_smoothness(delta: torch.Tensor) -> torch.Tensor:
    """Per-example sum of squared differences between neighbouring grid points."""
    total = torch.zeros(len(delta), device=delta.device, dtype=delta.dtype)
    for d in range(2, delta.dim()):
        total = total + delta.diff(dim=d).pow(2).flatten(1).sum(1)
    return total


def recolor(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 50,
            grid: int = 16, smoothness: float = 0.05, loss: str = "ce", eot: int = 1,
            seed: int = 0) -> torch.Tensor:
    """``eps``: bound on the colour shift per channel, on the [0, 1] scale. ``smoothness``
    weighs the grid penalty relative to ε² per pair of neighbours."""
    x, y = x.detach(), y.detach()
    if eps <= 0 or steps <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    n, c = x.shape[:2]
    shape = (n, 1, grid) if c == 1 else (n, 3, grid, grid, grid)
    delta = core.uniform(g, shape, x, -eps, eps)
    return core.param_pgd(model, x, y, delta, apply_colour_map, eps, steps,
                          loss=loss, penalty=lambda d: smoothness * grid_smoothness(d) / eps ** 2,
                          eot=eot)
