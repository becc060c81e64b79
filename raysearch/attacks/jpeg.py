"""JPEG-domain attack in the style of Kang et al. (2019, "Testing robustness against unforeseen
adversaries"): an L∞-bounded perturbation of the 8×8 block DCT coefficients of the image
(in YCbCr for colour images, as JPEG codes them).

x' = clip(x + M⁻¹·IDCT_8×8(δ), 0, 1) with ‖δ‖∞ ≤ ε per coefficient (orthonormal DCT, so a
coefficient of size ε carries the same energy as a pixel change of size ε: each block's pixel
L2 change is at most 8ε, like an L∞ ball of radius ε). The perturbation is smooth within a
block or concentrated in frequency rather than spread pixel by pixel, so it is unseen by an L∞
model. Maximizes cross-entropy with signed steps from a random start.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from raysearch.attacks import core

BLOCK = 8
_RGB2YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def dct_matrix(k: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (k×k): coefficients = D·block·Dᵀ."""
    i = torch.arange(k, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * k)) * math.sqrt(2 / k)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def block_idct(coef: torch.Tensor, k: int = BLOCK) -> torch.Tensor:
    """Inverse of ``block_dct`` (H, W multiples of k)."""
    d = dct_matrix(k, coef.device, coef.dtype)
    n, c, h, w = coef.shape
    b = coef.view(n, c, h // k, k, w // k, k).transpose(3, 4)
    return (d.T @ b @ d).transpose(3, 4).reshape(n, c, h, w)


def block_dct(x: torch.Tensor, k: int = BLOCK) -> torch.Tensor:
    """Orthonormal 2-D DCT of every k×k block."""
    d = dct_matrix(k, x.device, x.dtype)
    n, c, h, w = x.shape
    b = x.view(n, c, h // k, k, w // k, k).transpose(3, 4)
    return (d @ b @ d.T).transpose(3, 4).reshape(n, c, h, w)


def to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """Linear part of the JPEG colour transform (the offsets cancel in differences)."""
    if x.shape[1] != 3:
        return x
    m = torch.tensor(_RGB2YCBCR, device=x.device, dtype=x.dtype)
    return torch.einsum("ij,njhw->nihw", m, x)


def from_ycbcr(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    m = torch.linalg.inv(torch.tensor(_RGB2YCBCR, dtype=torch.float64)).to(x.device, x.dtype)
    return torch.einsum("ij,njhw->nihw", m, x)


def render(x: torch.Tensor, delta: torch.Tensor, k: int = BLOCK) -> torch.Tensor:
    """x plus the pixel-space image of the coefficient perturbation ``delta`` (padded size)."""
    h, w = x.shape[-2:]
    shift = from_ycbcr(block_idct(delta, k))[..., :h, :w]
    return (x + shift).clamp(0, 1)


def jpeg(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 50,
         loss: str = "ce", eot: int = 1, seed: int = 0) -> torch.Tensor:
    """``eps``: bound on every DCT coefficient of the perturbation, on the [0, 1] pixel scale.
    Images whose side is not a multiple of 8 get coefficients for the padded size; the padding
    is cropped away."""
    x, y = x.detach(), y.detach()
    if eps <= 0 or steps <= 0 or not len(x):
        return x.clone()
    g = core.generator(x, seed)
    n, c, h, w = x.shape
    shape = (n, c, math.ceil(h / BLOCK) * BLOCK, math.ceil(w / BLOCK) * BLOCK)
    delta = core.uniform(g, shape, x, -eps, eps)
    return core.param_pgd(model, x, y, delta, render, eps, steps, loss=loss, eot=eot)

