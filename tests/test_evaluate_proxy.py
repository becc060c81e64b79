"""The per-epoch proxy (raysearch.evaluate.proxy): counts, per-call scoring of randomized
predictors (checked against closed forms on a randomized toy), robust at most clean per image."""
from __future__ import annotations

import math

import torch
from torch import nn

from raysearch.attacks import ATTACKS
from raysearch.evaluate import proxy
from trainables.base import Predictor

Z95 = 1.96  # two-sided 95% normal quantile


class Fixed(nn.Module):
    """Always class 0 (a constant, so no perturbation changes the answer)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


class Rows(nn.Module):
    """Counts the images it is called on (EOT copies are stacked into one call)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


class Coin(nn.Module):
    """Two classes; every call answers class 0 with probability ``p``, independently per image
    and call, whatever the image."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        right = (torch.rand(len(x), device=x.device) < self.p).float()
        return torch.stack([right, 1 - right], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


class Threshold(nn.Module):
    """Class 0 where the mean pixel is above 0.5, else class 1: a step, so every input gradient
    is zero and PGD never leaves its random start."""

    def forward(self, x):
        above = (x.flatten(1).mean(1) > 0.5).float()
        return torch.stack([above, 1 - above], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_proxy_counts_clean_and_robust():
    x = torch.rand(10, 1, 4, 4)
    y = torch.tensor([0] * 7 + [1] * 3)
    clean, robust, n = proxy.proxy_eval(Predictor(Fixed()), x, y, 0.1, 3, 1, batch_size=4)
    assert (clean, robust, n) == (7.0, 7.0, 10.0)


def test_randomized_predictors_are_scored_on_eot_calls_deterministic_on_one():
    """A deterministic predictor is scored on one call per image; a randomized one that averages
    4 draws per call, asked for 20 draws, on 5 calls (every call counted by the rows it sees)."""
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    model = Rows(Fixed())
    proxy.proxy_eval(Predictor(model), x, y, 0.0, 3, 20)
    assert model.rows == 2 * 6  # clean and attacked scores; a zero radius runs no attack step
    model.rows = 0
    proxy.proxy_eval(Predictor(model, randomized=True, draws_per_call=4), x, y, 0.0, 3, 20)
    assert model.rows == 2 * 5 * 6


def test_the_proxy_attack_lowers_accuracy_and_stays_in_the_ball(trained, digits):
    """The registered PGD through the proxy: on an undefended digits model robust accuracy falls
    far below clean at ε 0.2; at ε 0 the two agree."""
    from raysearch import data as data_mod

    model = trained["standard"][1]["classifier"]
    x, y = data_mod.eval_subset(digits.val, 100)
    clean, robust, n = proxy.proxy_eval(Predictor(model), x, y, 0.2, 10, 1)
    assert n == 100 and clean > 90 and robust < clean - 40
    assert proxy.proxy_eval(Predictor(model), x, y, 0.0, 10, 1)[:2] == (clean, clean)
    seeded = [proxy.proxy_eval(Predictor(model), x, y, 0.2, 10, 1, seed=3)[1] for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_randomized_proxy_sums_per_call_fractions():
    """A coin right with probability p per call, scored on k = 21 calls (eot 21): the clean sum
    over n images is n·p in expectation, the robust sum n·E[min(A, B)/k] for independent
    A, B ~ Binomial(k, p) (clean and attacked fractions; the attack cannot move the coin). Both
    are within 1.96 standard deviations; the worker divides the sums by n as before."""
    p, k, n = 0.7, 21, 300
    torch.manual_seed(0)
    x, y = torch.rand(n, 1, 4, 4), torch.zeros(n, dtype=torch.long)
    clean, robust, count = proxy.proxy_eval(Predictor(Coin(p), randomized=True), x, y, 0.1, 2, k)
    assert count == n and robust <= clean
    assert abs(clean / n - p) <= Z95 * math.sqrt(p * (1 - p) / (n * k))
    pmf = [math.comb(k, j) * p ** j * (1 - p) ** (k - j) for j in range(k + 1)]
    tail = [sum(pmf[j:]) ** 2 for j in range(k + 2)]  # P(min(A, B) >= j)
    probs = [tail[j] - tail[j + 1] for j in range(k + 1)]
    mean = sum(j / k * q for j, q in enumerate(probs))
    sd = math.sqrt((sum((j / k) ** 2 * q for j, q in enumerate(probs)) - mean ** 2) / n)
    assert abs(robust / n - mean) <= Z95 * sd, (robust / n, mean, sd)


def test_robust_never_exceeds_clean_per_image():
    """An image wrong clean counts as not robust even where the attack's image happens to be
    right (the clean image is inside the ball): PGD on a zero-gradient step model stays at its
    random start, which crosses the threshold for some images classified wrong clean."""
    x, y = torch.full((40, 1, 4, 4), 0.499), torch.zeros(40, dtype=torch.long)
    model = Threshold()
    attack = ATTACKS[proxy.PROXY_ATTACK]
    x_adv = attack.fn(model, x, y, 0.1, eot=1, seed=0, **{**attack.params, "steps": 3, "restarts": 1})
    assert (model(x_adv).argmax(1) == y).sum() > 0
    assert proxy.proxy_eval(Predictor(model), x, y, 0.1, 3, 1) == (0.0, 0.0, 40.0)
