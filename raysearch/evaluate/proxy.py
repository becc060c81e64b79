"""The cheap per-epoch evaluation every trial reports: clean and L∞ PGD accuracy at ε_eval on a
fixed validation subset. The attack is the registered PGD of the final suite
(``raysearch.attacks``, cross-entropy, random start, step 2.5·ε/steps) with the proxy's steps
and one restart, seeded, so the proxy never touches the training's random stream. Randomized
predictors are attacked with EOT (gradients averaged over draws) and scored per call, as the
final suite scores them (``raysearch.attacks.core.score_calls``): each image scores the
fraction of fresh calls that answer correctly, clean and on its PGD image, and its robust value
is the smaller of the two (the clean image is inside the ball). A deterministic predictor is
scored on one call. This is a proxy for the search; the full suite runs after it
(``raysearch.evaluate``).
"""
from __future__ import annotations

import torch

from raysearch.attacks import ATTACKS, core
from trainables.base import Predictor

PROXY_ATTACK = "pgd_ce"  # the registry entry whose function (and loss) the proxy runs


def proxy_eval(pred: Predictor, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, eot: int,
               batch_size: int = 256, seed: int = 0) -> tuple[float, float, float]:
    """(clean, robust, n) summed over the images: per image the fraction of scoring calls
    correct clean, and min(that, the fraction correct on its PGD image); for a deterministic
    predictor the counts of correct images. ``eot``: random draws per gradient; a randomized
    predictor is called ``pred.calls(eot)`` times per gradient and as many times to score."""
    attack = ATTACKS[PROXY_ATTACK]
    params = {**attack.params, "steps": steps, "restarts": 1}
    calls = pred.calls(eot)
    clean = robust = 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        clean_score = core.fraction_correct(pred.model, xb, yb, calls)
        with torch.enable_grad():
            x_adv = attack.fn(pred.model, xb, yb, eps, eot=calls, seed=seed * 100003 + i, **params)
        attacked = core.fraction_correct(pred.model, x_adv, yb, calls)
        clean += clean_score.sum().item()
        robust += torch.minimum(clean_score, attacked).sum().item()
    return clean, robust, float(len(y))
