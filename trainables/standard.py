"""Standard training: cross-entropy on clean images. The zero-robustness anchor of every front."""
from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional

from trainables.base import BaseConfig, Defense, sgd_step


@dataclass(frozen=True)
class Config(BaseConfig):
    pass


class Standard(Defense):
    name = "standard"
    Config = Config
    summary = "plain cross-entropy training (no defense)"

    def train_step(self, ctx, x, y):
        with ctx.autocast():
            loss = functional.cross_entropy(ctx.nets["classifier"](x), y)
        sgd_step(ctx.opts["classifier"], loss, ctx.scheds["classifier"])
        return {"loss": loss.item()}
