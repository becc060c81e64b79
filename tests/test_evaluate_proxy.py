"""The per-epoch proxy (raysearch.evaluate.proxy): counts, EOT scoring of randomized predictors."""
from __future__ import annotations

import torch
from torch import nn

from raysearch.evaluate import proxy
from trainables.base import Predictor


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
