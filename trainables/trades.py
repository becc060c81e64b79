"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + β·KL(f(x_adv) ‖ f(x)).

The attack maximizes the KL term from a small random start (0.001·N(0, 1)); β is the
robustness–accuracy knob (default 6; larger β buys robustness with clean accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from trainables.base import BaseConfig, Defense, sgd_step
from trainables.common import eval_mode


@dataclass(frozen=True)
class Config(BaseConfig):
    beta: float = 6.0  # weight of the KL robustness term
    attack_steps: int = 10
    step_factor: float = 2.5  # step size = step_factor·ε/attack_steps (2/255 at 8/255, 10 steps)


def kl_attack(f, x, eps, steps, step_size):
    """L∞ PGD maximizing KL(f(x') ‖ f(x)) from x + 0.001·N(0, 1), as in the TRADES reference."""
    with torch.no_grad():
        p_nat = functional.softmax(f(x), 1)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = functional.kl_div(functional.log_softmax(f(x_adv), 1), p_nat, reduction="sum")
        g = torch.autograd.grad(loss, x_adv)[0]
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step_size * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


class TRADES(Defense):
    name = "trades"
    Config = Config
    summary = "Zhang et al. 2019: CE + β·KL(f(x_adv) ‖ f(x))"

    def train_step(self, ctx, x, y):
        cfg, f = ctx.cfg, ctx.raw["classifier"]
        with eval_mode(f), ctx.autocast():  # crafting is most of the step's cost
            x_adv = kl_attack(f, x, cfg.eps_train, cfg.attack_steps,
                             cfg.step_factor * cfg.eps_train / cfg.attack_steps)
        net = ctx.nets["classifier"]
        with ctx.autocast():
            # separate passes, BN statistics per batch as in the reference; the second calls the
            # bare module: a second DDP-wrapped forward would overwrite the BN buffers the first
            # saved for backward (an in-place error on PyTorch 2.6 and later releases whose DDP did not
            # keep the buffers' version counters); DDP still averages the
            # gradient summed over both passes
            adv, nat = net(x_adv), f(x)
            ce = functional.cross_entropy(nat, y)
            kl = functional.kl_div(functional.log_softmax(adv, 1), functional.softmax(nat, 1), reduction="batchmean")
            loss = ce + cfg.beta * kl
        sgd_step(ctx.opts["classifier"], loss, ctx.scheds["classifier"])
        return {"loss": loss.item(), "ce": ce.item(), "kl": kl.item()}
