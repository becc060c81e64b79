"""The cheap per-epoch evaluation every trial reports: clean accuracy and L∞ PGD accuracy at
ε_eval. Randomized predictors are attacked with EOT (gradients averaged over draws) and scored
on probabilities averaged over the same number of draws, so randomness is never left to flatter
the number. This is a proxy for the search; the full suite runs after it (``raysearch.evaluate``).
"""
from __future__ import annotations

import torch

from trainables.base import Predictor
from trainables.common import pgd_linf


@torch.no_grad()
def predict(pred: Predictor, x: torch.Tensor, calls: int) -> torch.Tensor:
    """Labels from probabilities averaged over ``calls`` forward passes (1 if deterministic)."""
    n = calls if pred.randomized else 1
    probs = sum(torch.softmax(pred.model(x), 1) for _ in range(n))
    return probs.argmax(1)


def proxy_eval(pred: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, eot: int,
               batch_size: int = 256) -> tuple[float, float, float]:
    """(clean correct, robust correct, n) summed over the batch. ``eot``: random draws per
    gradient and per score (``pred.calls(eot)`` calls of a predictor that averages several)."""
    clean = robust = 0.0
    eot = pred.calls(eot)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        clean += (predict(pred, xb, eot) == yb).sum().item()
        with torch.enable_grad():
            x_adv = pgd_linf(pred.model, xb, yb, eps, steps, 2.5 * eps / steps, eot=eot)
        robust += (predict(pred, x_adv, eot) == yb).sum().item()
    return clean, robust, float(len(y))
