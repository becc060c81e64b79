"""Spatially transformed adversarial examples (StAdv; Xiao et al., ICLR 2018), bounded.

Each pixel is resampled (bilinearly, borders replicated) from a position displaced by a flow
field f (2 × H × W per image, in pixels). The attack maximizes the CW margin minus
τ·L_flow(f), L_flow = Σ_p Σ_{q∈N(p)} sqrt(‖f_p − f_q‖² + 1e-8), the smoothness penalty of
StAdv (τ = 0.05), with signed-gradient steps, and bounds ‖f‖∞ by a budget in pixels (the
bounded variant used by Laidlaw et al., ICLR 2021, for unseen-attack evaluation). The image
changes by the interpolation only, so an L∞ model sees large pixel changes at edges: expect L∞
adversarial training to help only partly.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional

from raysearch.attacks import core


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample x at pixel positions displaced by ``flow`` (N×2×H×W, pixels; channel 0 is the
    horizontal displacement). Clamped to [0, 1]: bilinear weights can round a hair past it."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # H×W×2, (x, y) order
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=x.device, dtype=x.dtype)
    grid = base[None] + flow.permute(0, 2, 3, 1) * scale
    return functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)


def flow_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Per-example StAdv smoothness: each neighbouring pair counted from both sides."""
    dh = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    dw = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    return 2 * ((dh.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1)
                + (dw.pow(2).sum(1) + 1e-8).sqrt().flatten(1).sum(1))


def stadv(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 50,
          smoothness: float = 0.05, loss: str = "margin", eot: int = 1, seed: int = 0) -> torch.Tensor:
    """``eps``: bound on every flow component, in pixels."""
    x, y = x.detach(), y.detach()
    if eps <= 0 or steps <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    n, _, h, w = x.shape
    flow = core.uniform(g, (n, 2, h, w), x, -eps, eps)
    return core.param_pgd(model, x, y, flow, warp, eps, steps, loss=loss,
                          penalty=lambda f: smoothness * flow_smoothness(f), eot=eot)
