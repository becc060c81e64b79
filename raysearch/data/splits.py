"""The in-memory form of a data set: ``Split`` (images and labels), ``Data`` (its spec and the
train / validation / test splits), the fixed hold-out of the validation split, and ``DataError``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainables.spec import DataSpec


class DataError(Exception):
    """Data is missing or malformed; the message is one line that says what to do."""


@dataclass
class Split:
    x: torch.Tensor  # N×C×H×W: uint8 (0..scale), or float32 in [0, 1] with scale 1
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx=None) -> torch.Tensor:
        """Float images in [0, 1] (a new tensor: the split itself is never changed)."""
        x = self.x if idx is None else self.x[idx]
        if x.dtype == torch.float32:
            return x / self.scale
        return x.float().div_(self.scale)

    scale: float = 255.0


@dataclass
class Data:
    spec: DataSpec
    train: Split
    val: Split
    test: Split
    augment: bool  # random crop in the training loop (32×32 natural images)
    flip: bool  # and random horizontal flips (CIFAR)


def hold_out(split: Split, n: int, seed: int = 0) -> tuple[Split, Split]:
    """(the rest, n images held out): the same n for the same split and seed."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    keep, held = perm[n:], perm[:n]
    return (Split(split.x[keep], split.y[keep], split.scale),
            Split(split.x[held], split.y[held], split.scale))
