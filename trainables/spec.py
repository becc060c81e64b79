"""What a defense knows about its data set: image shape, classes, normalization and the
default evaluation budgets (``DataSpec``). A leaf module: the networks and the defense
interface both use it, and it imports neither."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """What a defense needs to know about the data: shapes, classes, normalization, budgets."""

    name: str
    channels: int
    size: int  # height = width, pixels
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps_eval: float  # default L∞ evaluation radius on [0, 1]
    eps_eval_l2: float  # default L2 evaluation radius on [0, 1] images
    eps_scale: float  # eps_eval / (8/255): multiplies CIFAR-scale budgets
