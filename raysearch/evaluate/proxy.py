"""The cheap per-epoch evaluation every trial reports: clean accuracy and L∞ PGD accuracy at
ε_eval on a fixed validation subset. The attack is the registered PGD of the final suite
(``raysearch.attacks``, cross-entropy, random start, step 2.5·ε/steps) with the proxy's steps
and one restart, seeded, so the proxy never touches the training's random stream. Randomized
predictors are attacked with EOT (gradients averaged over draws) and scored on probabilities
averaged over the same number of draws, so randomness is never left to flatter the number.
This is a proxy for the search; the full suite runs after it (``raysearch.evaluate``).
"""
from __future__ import annotations

import torch

from raysearch.attacks import ATTACKS, core
from trainables.base import Predictor

PROXY_ATTACK = "pgd_ce"  # the registry entry whose function (and loss) the proxy runs


def proxy_eval(pred: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, eot: int,
               batch_size: int = 256, seed: int = 0) -> tuple[float, float, float]:
    """(clean correct, robust correct, n) summed over the batch. ``eot``: random draws per
    gradient and per score (``pred.calls(eot)`` calls of a predictor that averages several)."""
    attack = ATTACKS[PROXY_ATTACK]
    params = {**attack.params, "steps": steps, "restarts": 1}
    calls = pred.calls(eot)
    clean = robust = 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        clean += (core.predict(pred.model, xb, calls) == yb).sum().item()
        with torch.enable_grad():
            x_adv = attack.fn(pred.model, xb, yb, eps, eot=calls, seed=seed * 100003 + i, **params)
        robust += (core.predict(pred.model, x_adv, calls) == yb).sum().item()
    return clean, robust, float(len(y))
