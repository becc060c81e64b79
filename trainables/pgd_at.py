"""PGD adversarial training (Madry et al., ICLR 2018): train on L∞ PGD examples.

Standard recipe: ε 8/255, step 2/255, 10 steps, random start, SGD momentum 0.9, wd 5e-4,
BN in eval mode while crafting the attack. Expect clean accuracy to fall and PGD accuracy to
rise with ε_train.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional

from trainables.base import BaseConfig, Defense, sgd_step
from trainables.common import eval_mode, pgd_linf


@dataclass(frozen=True)
class Config(BaseConfig):
    attack_steps: int = 10  # PGD iterations when crafting training examples
    step_factor: float = 2.5  # step size = step_factor·ε/attack_steps (2/255 at 8/255, 10 steps)


class PGDAT(Defense):
    name = "pgd_at"
    Config = Config
    summary = "Madry et al. 2018: train on L∞ PGD examples"

    def train_step(self, ctx, x, y):
        cfg, f = ctx.cfg, ctx.raw["classifier"]
        with eval_mode(f), ctx.autocast():  # crafting is most of the step's cost
            x_adv = pgd_linf(f, x, y, cfg.eps_train, cfg.attack_steps,
                             cfg.step_factor * cfg.eps_train / cfg.attack_steps)
        with ctx.autocast():
            loss = functional.cross_entropy(ctx.nets["classifier"](x_adv), y)
        sgd_step(ctx.opts["classifier"], loss, ctx.scheds["classifier"])
        return {"loss": loss.item()}
