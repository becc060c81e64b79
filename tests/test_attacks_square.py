"""Square against randomized predictors: the incumbent re-measured on the proposal's draws.

Against a randomized model, Square used to compare each proposal's one-call margin with the
lowest margin the incumbent had ever shown (a minimum of earlier noisy draws), so a proposal
passed only on a lucky draw. ``stale_square`` below is that rule: the loop of square.py before
the change with the randomized protocol's settings (full budget, one call per query), built
from the module's own start and proposals (its output equals the old code's for the same seeds).
On two randomized toys, one with a per-call accuracy known in closed form and one measured on
fresh draws, the replayed comparison fools clearly more images than the old rule given as many
calls (twice the queries). The deterministic path is pinned to the output of the code before
the change, and the calls a query costs are counted.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from raysearch import attacks
from raysearch.attacks import core

# the package exports the attack function under its module's name; fetch the module
square = importlib.import_module("raysearch.attacks.square")

EPS = 0.2
SIDE = 8
N = 200  # images per toy: the per-image accuracies' standard error is a few points at most


def stale_square(model, x, y, eps, n_queries, seed=0, p_init=0.8):
    """The rule before the change (full budget, one call per query): a proposal is kept when its
    margin is below the lowest margin measured so far for its image."""
    g = core.generator(x, seed)
    h, w = x.shape[-2:]
    x_best = square.start(g, x, eps)
    lowest = -core.margin_loss(model(x_best), y)
    for it in range(n_queries):
        x_new = square.propose(g, x, x_best, eps, square.window_side(p_init, it, n_queries, h, w))
        margin = -core.margin_loss(model(x_new), y)
        better = margin < lowest
        x_best = torch.where(better.view(-1, 1, 1, 1), x_new, x_best)
        lowest = torch.where(better, margin, lowest)
    return x_best


class LogitNoise(nn.Module):
    """Two classes scored by a fixed linear direction of the image, plus Gaussian noise of SD
    ``sigma`` on each logit: a call is correct with probability Φ(m/(σ√2)), m the noise-free
    margin."""

    def __init__(self, direction: torch.Tensor, sigma: float):
        super().__init__()
        self.direction, self.sigma = direction, sigma

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - 0.5) * self.direction).flatten(1).sum(1)

    def forward(self, x):
        s = self.score(x)
        return torch.stack([s, -s], 1) + self.sigma * torch.randn(len(x), 2)

    def per_call_accuracy(self, x, y) -> torch.Tensor:
        margin = 2 * self.score(x) * (1 - 2 * y)
        return torch.distributions.Normal(0.0, 1.0).cdf(margin / (self.sigma * math.sqrt(2)))


class InputNoise(nn.Module):
    """Gaussian noise on the pixels, clipped to [0, 1] (so the noise does not simply add to the
    logits), then a fixed linear classifier; ``generator``: draw from a private stream instead of
    torch's global one."""

    def __init__(self, weight: torch.Tensor, sigma: float, generator: torch.Generator | None = None):
        super().__init__()
        self.weight, self.sigma, self.generator = weight, sigma, generator

    def forward(self, x):
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0, 1).flatten(1) @ self.weight.T

    def per_call_accuracy(self, x, y, draws: int = 400) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(123)
            return (core.draws(self, x, draws).argmax(-1) == y).float().mean(0)


def halves_toy():
    """Images brighter on the left (class 0) or on the right (class 1) by ε/2, and logit noise
    that makes a clean call right 90% of the time; the whole ε-ball flips the noise-free margin,
    leaving 10% per-call accuracy."""
    direction = torch.ones(1, 1, SIDE, SIDE)
    direction[..., SIDE // 2:] = -1
    y = torch.arange(N) % 2
    gen = torch.Generator().manual_seed(0)
    x = 0.5 + EPS / 2 * direction * (1 - 2 * y).view(-1, 1, 1, 1)
    x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    clean_margin = 2 * EPS / 2 * SIDE * SIDE
    return LogitNoise(direction, clean_margin / math.sqrt(2) / 1.28), x, y


def bars_toy(generator: torch.Generator | None = None):
    """Dim vertical bars (0.35 on 0.1) on the left (class 0) or the right (class 1), pixel noise
    of SD 0.4: ~95% per-call accuracy clean."""
    bars = torch.zeros(2, 1, SIDE, SIDE)
    bars[0, ..., 1:3] = 1
    bars[1, ..., 5:7] = 1
    y = torch.arange(N) % 2
    gen = torch.Generator().manual_seed(0)
    x = (0.1 + 0.25 * bars[y] + 0.03 * torch.randn(N, 1, SIDE, SIDE, generator=gen)).clamp(0, 1)
    weight = torch.stack([(bars[0] - bars[1]).flatten(), (bars[1] - bars[0]).flatten()])
    return InputNoise(weight, 0.4, generator), x, y


def in_budget(x_adv, x, eps=EPS) -> bool:
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


@pytest.mark.parametrize("toy", [halves_toy, bars_toy], ids=["logit-noise", "input-noise"])
def test_replayed_draws_fool_images_the_stale_minimum_missed(toy):
    model, x, y = toy()
    registered = attacks.ATTACKS["square"]
    calls = 2 * registered.randomized["n_queries"]  # the new rule's calls per image, start aside
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x_old = stale_square(model, x, y, EPS, calls)
    x_new = attacks.run(registered, model, x, y, EPS, randomized=True)
    assert in_budget(x_old, x) and in_budget(x_new, x)
    clean, old, new = (model.per_call_accuracy(images, y) for images in (x, x_old, x_new))
    assert clean.mean() >= 0.85
    gain = old - new  # per image: how much more often a call is fooled
    assert gain.mean() >= 0.25, (clean.mean().item(), old.mean().item(), new.mean().item())
    assert gain.mean() >= 5 * gain.std() / math.sqrt(N)


def forward_sizes(model: nn.Module, run) -> list[int]:
    sizes: list[int] = []
    hook = model.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    try:
        run()
    finally:
        hook.remove()
    return sizes


@pytest.mark.parametrize("eot", [1, 3])
def test_a_query_costs_two_calls_per_draw(eot):
    """The start is measured twice on the same draws (are they replayable?), then every query
    measures the incumbent and the proposal on the same draws: 2·eot calls per image each."""
    model, x, y = bars_toy()
    x, y = x[:10], y[:10]
    sizes = forward_sizes(model, lambda: square.square(model, x, y, EPS, n_queries=5, eot=eot, full_budget=True))
    assert sizes == [10 * eot] * (2 + 2 * 5)


def test_draws_that_cannot_be_replayed_keep_the_remembered_margin():
    """A model drawing from its own stream cannot be replayed: each query calls it once on the
    proposal, compared with the lowest margin measured so far; still a working attack."""
    model, x, y = bars_toy(torch.Generator().manual_seed(5))
    sizes = forward_sizes(model, lambda: square.square(model, x[:10], y[:10], EPS, n_queries=5, full_budget=True))
    assert sizes == [10] * (2 + 5)
    x_adv = square.square(model, x, y, EPS, n_queries=300, full_budget=True)
    assert in_budget(x_adv, x)
    model.generator = None  # measured on torch's global stream
    assert model.per_call_accuracy(x_adv, y).mean() <= model.per_call_accuracy(x, y).mean() - 0.2


def test_randomized_square_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    model, x, y = bars_toy()
    x, y = x[:20], y[:20]
    before = torch.get_rng_state()
    runs = [square.square(model, x, y, EPS, n_queries=50, full_budget=True, seed=s) for s in (3, 3, 4)]
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# Signs of x_adv − x (every pixel moves by exactly ε here: x is in [0.25, 0.75]) from the code
# before the change, for the toy below, ε 0.1, 60 queries, seed 7; image 5 stays unfooled, so
# the early stop and the re-compaction of the remaining images are both exercised.
PINNED = (
    "+-+-+---++--+++-++++++++++++-+++-+++++-+-++++++-++",
    "-+-+---------++-+++++--+--+++-----+-+-++---++---+-",
    "--+-----------------+-----++---++---++++-+++++++++",
    "++----+----+-+-++-+-+------+++++----+-+-+--+----+-",
    "++-----++-++----+---+-++-+------+++++----+---+-++-",
    "-++-------++-+--+---+---++++--+----++---++-++---+-",
    "-+++---------++--++++-----++++-++++-++++-+-+++-+++",
    "+-++-+-+++--++++-++-+-+++-+-++-+----+----+-++-+-+-",
)


def test_deterministic_path_is_unchanged():
    g = torch.Generator().manual_seed(2024)
    x = 0.25 + 0.5 * torch.rand(8, 2, 5, 5, generator=g)
    weight = torch.randn(3, 50, generator=g)

    def model(images):
        return images.flatten(1) @ weight.T

    y = model(x).argmax(1)
    x_adv = square.square(model, x, y, 0.1, n_queries=60, seed=7)
    signs = torch.tensor([[1.0 if c == "+" else -1.0 for c in row] for row in PINNED]).view_as(x)
    assert torch.equal(x_adv, (x + 0.1 * signs).clamp(0, 1))
    assert (model(x_adv).argmax(1) != y).tolist() == [True] * 5 + [False] + [True] * 2
