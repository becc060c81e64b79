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


class Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_proxy_counts_clean_and_robust():
    x = torch.rand(10, 1, 4, 4)
    y = torch.tensor([0] * 7 + [1] * 3)
    clean, robust, n = proxy.proxy_eval(Predictor(Fixed()), x, y, 0.1, 3, 1, batch_size=4)
    assert (clean, robust, n) == (7.0, 7.0, 10.0)


def test_predict_averages_calls_of_randomized_predictors_only():
    x = torch.rand(5, 1, 4, 4)
    model = Counting(Fixed())
    assert proxy.predict(Predictor(model), x, 20).tolist() == [0] * 5 and model.calls == 1
    model.calls = 0
    proxy.predict(Predictor(model, randomized=True, draws_per_call=4), x, 5)
    assert model.calls == 5
