"""Training-time attack primitives shared by the defenses: pure functions of tensors.

Inputs are [0, 1] images; the device is taken from the input. ``loss_fn(logits, y)`` is what
the attack maximizes (summed over the batch, so each example's gradient is its own).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.nn import functional
from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Put modules in eval mode (BN uses running stats while crafting attacks), then restore."""
    states = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, s in zip(modules, states):
            m.train(s)


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(logits, y, reduction="sum")


def margin_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin: max_{j≠y} z_j − z_y, summed; maximizing it pushes toward misclassification."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).sum()


def pgd_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s step for ``steps`` signed steps in an ε-ball: 2.5·ε/k."""
    return 2.5 * eps / steps


def pgd_linf(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             eps: float, steps: int, step_size: float | None = None, *,
             loss_fn: Callable = ce_sum, random_start: bool = True, eot: int = 1) -> torch.Tensor:
    """L∞ PGD (Madry et al.): signed gradient ascent on ``loss_fn``, projected to the ε-ball and
    [0, 1]. ``eot`` > 1 averages the gradient over that many forward passes (randomized models).
    Returns a detached adversarial batch; ``model`` is used as is (callers set eval mode)."""
    if eps <= 0 or steps <= 0:
        return x.detach().clone()
    step_size = pgd_step_size(eps, steps) if step_size is None else step_size
    x = x.detach()
    delta = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        grad = torch.zeros_like(x)
        for _ in range(eot):
            loss = loss_fn(model(x + delta), y)
            grad += torch.autograd.grad(loss, delta)[0]
        with torch.no_grad():
            delta += step_size * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    return (x + delta).detach()


def fgsm(model, x, y, eps: float, *, loss_fn: Callable = ce_sum) -> torch.Tensor:
    """One signed step of size ε from the clean point (no random start)."""
    return pgd_linf(model, x, y, eps, 1, eps, loss_fn=loss_fn, random_start=False)


def smooth_ce(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    return functional.cross_entropy(logits, y, label_smoothing=smoothing)


def frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
