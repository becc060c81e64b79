"""Drawing images from a split: a fixed evaluation subset, shuffled training batches, and the
random crop / flip augmentation, on any device."""
from __future__ import annotations

import torch

from raysearch.data.splits import Split


def eval_subset(split: Split, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset (same seed -> same images) as float images and labels."""
    n = min(n, len(split))
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.images(idx), split.y[idx]


def shuffled_batches(split: Split, batch_size: int, device: torch.device | str = "cpu",
                     augment: bool = False, flip: bool = False):
    """One shuffled pass over ``split`` as (images, labels) batches on ``device``, with random
    crop (and flip) when ``augment``: the loader of component pre-training."""
    perm = torch.randperm(len(split))
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        x = split.images(idx).to(device)
        yield (augment_batch(x, flip) if augment else x), split.y[idx].to(device)


def augment_batch(x: torch.Tensor, flip: bool, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and (optionally) horizontal flip, per image, on x's device."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    j = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, device=x.device) < 0.5
        out[mask] = out[mask].flip(3)
    return out
