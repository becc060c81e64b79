"""Common corruptions generated on the fly (after Hendrycks & Dietterich, ICLR 2019, CIFAR-10-C
parameters): Gaussian noise, Gaussian blur, contrast reduction and fog-like fractal haze, at
severities 1–5. Not adversarial: they measure robustness to natural shifts, and an L∞ defense
is not expected to help (noise excepted). The model is not queried; the call shape matches the
attacks so the suite treats them alike. Random ones use their own seeded generator.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional

from raysearch.attacks import core

# CIFAR-10-C severities 1..5
NOISE_STD = (0.04, 0.06, 0.08, 0.09, 0.10)  # on [0, 1]
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)  # pixels
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the deviation from the image mean
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (haze strength, decay)


def gaussian_noise(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    return (x + NOISE_STD[severity - 1] * core.normal(g, x.shape, x)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, severity: int, g: torch.Generator | None = None) -> torch.Tensor:
    sigma = BLUR_SIGMA[severity - 1]
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    out = functional.pad(x, (r, r, r, r), mode="replicate")
    out = functional.conv2d(out, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = functional.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return out.clamp(0, 1)


def contrast(x: torch.Tensor, severity: int, g: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * CONTRAST[severity - 1] + mean).clamp(0, 1)


def fractal_noise(n: int, h: int, w: int, decay: float, g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Haze in [0, 1]: random octaves upsampled bicubically, amplitude divided by ``decay``
    per octave (larger decay: smoother haze), like the plasma fractal of CIFAR-10-C's fog."""
    size = 2 ** math.ceil(math.log2(max(h, w)))
    total = torch.zeros(n, 1, size, size, device=like.device, dtype=like.dtype)
    amp, cells = 1.0, 2
    while cells <= size:
        octave = core.uniform(g, (n, 1, cells, cells), like, -1, 1)
        total += amp * functional.interpolate(octave, size=(size, size), mode="bicubic", align_corners=False)
        amp /= decay
        cells *= 2
    total = total[..., :h, :w]
    lo = total.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = total.flatten(1).amax(1).view(-1, 1, 1, 1)
    return (total - lo) / (hi - lo + 1e-12)


def fog(x: torch.Tensor, severity: int, g: torch.Generator) -> torch.Tensor:
    strength, decay = FOG[severity - 1]
    n, _, h, w = x.shape
    haze = fractal_noise(n, h, w, decay, g, x)
    top = x.flatten(1).amax(1).view(-1, 1, 1, 1)
    return ((x + strength * haze) * top / (top + strength)).clamp(0, 1)


CORRUPTIONS = {"gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur,
               "contrast": contrast, "fog": fog}


@torch.no_grad()
def corrupt(model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float = math.nan, *,
            kind: str, severity: int, eot: int = 1, seed: int = 0) -> torch.Tensor:
    """The corrupted images (``model``, ``y``, ``eps`` and ``eot`` are unused)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return CORRUPTIONS[kind](x.detach(), severity, core.generator(x, seed))
