"""rvs mechanisms: the noise-only generator stays in the ε-ball, the OT term is a differentiable
distance, the generator ascends it, its weight pulls features together, and each update moves
exactly the network it trains (the whole step: tests/test_defenses.py). Tiny runs on the
bundled digits."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import changed, fresh_context, params
from trainables import REGISTRY
from trainables.rvs import COSTS, delta_from, logits_and_features, ot_distance, synthesize

DEFENSE = REGISTRY["rvs"]


@pytest.fixture(scope="module")
def examples(digits):
    """(spec, images, labels): the first 96 training examples."""
    return digits.spec, digits.train.images(torch.arange(96)), digits.train.y[:96]


def make_ctx(spec, seed=0, **changes):
    return fresh_context(DEFENSE, spec, seed, **changes)


def test_generator_perturbation_stays_in_eps_ball_and_unit_box(examples):
    spec, x, _ = examples
    ctx = make_ctx(spec)
    g, eps = ctx.raw["generator"], ctx.cfg.eps_train
    with torch.no_grad():
        for p in g.up[-1].parameters():
            p.mul_(50)  # an output far outside the ball must still be clipped to it
        delta = delta_from(g(g.noise(len(x), x.device)), eps)
        x_adv = synthesize(x, delta, eps)
    assert delta.shape == x.shape
    assert delta.abs().max() <= eps + 1e-6
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (delta.abs() > eps / 2).float().mean() > 0.5  # the clip was exercised
    with torch.no_grad():
        other = delta_from(g(g.noise(len(x), x.device)), eps)
    assert not torch.equal(delta, other)  # fresh noise, fresh perturbation


@pytest.mark.parametrize("cost", COSTS)
def test_ot_is_a_differentiable_distance(cost):
    torch.manual_seed(0)
    h = torch.randn(48, 16)
    same = ot_distance(h, h.clone(), cost=cost)
    near = ot_distance(h, h + 0.3 * torch.randn_like(h), cost=cost)
    a = h.clone().requires_grad_(True)
    b = (h + 1.0 + 0.3 * torch.randn_like(h)).requires_grad_(True)
    far = ot_distance(a, b, cost=cost)
    far.backward()
    assert same.abs() < 1e-3 * far
    assert same < near < far
    for t in (a, b):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("cost", COSTS)
def test_ot_is_a_ratio_that_shrinking_the_features_cannot_lower(cost):
    torch.manual_seed(0)
    h = torch.randn(48, 16)
    h_adv = h + 0.3 * torch.randn_like(h)
    base = ot_distance(h, h_adv, cost=cost)
    assert ot_distance(0.01 * h, 0.01 * h_adv, cost=cost) == pytest.approx(base.item(), rel=1e-3)
    # its gradient has no component along the features' own scale
    a, b = h.clone().requires_grad_(True), h_adv.clone().requires_grad_(True)
    ot_distance(a, b, cost=cost).backward()
    radial = (a.grad * a).sum() + (b.grad * b).sum()
    assert abs(radial.item()) < 1e-3 * (a.grad.norm() * a.norm() + b.grad.norm() * b.norm()).item()


def test_the_default_config_learns_digits(digits):
    """At its defaults (λ_OT 1, label smoothing 0.5) the classifier learns: 40 steps of the
    whole step (generator and classifier) leave clean accuracy far above chance."""
    ctx = make_ctx(digits.spec, seed=0)
    g = torch.Generator().manual_seed(0)
    x_all, y_all = digits.train.images(), digits.train.y
    for _ in range(40):
        idx = torch.randint(len(y_all), (128,), generator=g)
        DEFENSE.train_step(ctx, x_all[idx], y_all[idx])
    f = ctx.raw["classifier"].eval()
    with torch.no_grad():
        acc = (f(digits.val.images()).argmax(1) == digits.val.y).float().mean().item()
    assert acc > 0.5, acc


def test_ot_survives_tiny_regularizer_and_collapsed_features():
    torch.manual_seed(0)
    h = torch.randn(32, 8)
    d = ot_distance(h, h + 0.5, reg=1e-3, iters=200)  # log-domain: no overflow at small reg
    assert torch.isfinite(d) and d > 0
    z = torch.zeros(32, 8, requires_grad=True)  # all costs but a few are zero: median 0
    w = z.clone()
    w.data[:3] += 1.0
    out = ot_distance(z, w)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z.grad).all()


def _ot_on_fixed_perturbation(ctx, x):
    f, eps = ctx.raw["classifier"], ctx.cfg.eps_train
    g = torch.Generator().manual_seed(123)
    x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    f.eval()
    with torch.no_grad():
        return ot_distance(f.features(x), f.features(x_adv)).item()


def test_larger_ot_weight_trains_features_closer(examples):
    spec, x, y = examples
    dist = {}
    for weight in (0.1, 10.0):
        ctx = make_ctx(spec, seed=1, ot_weight=weight, sinkhorn_iters=40)
        for _ in range(8):
            DEFENSE.classifier_step(ctx, x, y)
        dist[weight] = _ot_on_fixed_perturbation(ctx, x)
    assert dist[10.0] < 0.5 * dist[0.1]


def test_generator_step_ascends_ot_and_touches_only_the_generator(examples):
    spec, x, y = examples
    ctx = make_ctx(spec, seed=2, gen_lr=0.05, sinkhorn_iters=40)
    f, g, eps = ctx.raw["classifier"], ctx.raw["generator"], ctx.cfg.eps_train
    for _ in range(3):  # BN running statistics of the eval-mode view become meaningful
        DEFENSE.classifier_step(ctx, x, y)
    z = g.noise(len(x), x.device)

    def ot_now():
        torch.manual_seed(7)  # same random start each time
        with torch.no_grad():
            f.eval()
            x_adv = synthesize(x, delta_from(g(z), eps), eps)
            out = ot_distance(f.features(x), f.features(x_adv)).item()
        f.train()
        return out

    before_ot, f_before, g_before = ot_now(), params(f), params(g)
    for _ in range(12):
        DEFENSE.generator_step(ctx, x)
    assert ot_now() > 1.15 * before_ot
    assert changed(g_before, g)
    assert not changed(f_before, f)
    assert all(p.requires_grad for p in f.parameters())  # the frozen view is undone


def test_classifier_step_leaves_the_generator(examples):
    spec, x, y = examples
    ctx = make_ctx(spec, sinkhorn_iters=20)
    terms = DEFENSE.train_step(ctx, x, y)
    assert set(terms) >= {"loss", "ce", "ot", "ot_gen"}
    g_before = params(ctx.raw["generator"])
    DEFENSE.classifier_step(ctx, x, y)
    assert not changed(g_before, ctx.raw["generator"])
    assert set(DEFENSE.trainable(ctx.cfg)) == set(DEFENSE.build(ctx.cfg, spec))  # nothing frozen


class _Wrapper(torch.nn.Module):
    """Stands in for a DDP wrapper: only ``forward`` is reachable through it."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def test_features_through_a_wrapper_match_the_direct_call(examples):
    spec, x, _ = examples
    f = make_ctx(spec).raw["classifier"].eval()
    logits, h = logits_and_features(_Wrapper(f), f, x)
    ref_logits, ref_h = logits_and_features(f, f, x)
    assert torch.allclose(logits, ref_logits) and torch.allclose(h, ref_h)
    assert h.shape == (len(x), f.head.in_features)
    assert not f.head._forward_hooks  # the capture hook is removed again


@pytest.mark.parametrize("cost", COSTS)
def test_ot_under_bf16_autocast_is_the_fp32_value(cost):
    """Training under --bf16 runs the classifier in autocast; the OT term must not: squared
    distances of nearby features are small differences of large dot products, which a bf16
    matmul rounds away (on these features the bf16 cost matrix read 16.75 for a true 11.67 at
    noise 0.3, and 2.0 for 0.32 at noise 0.05)."""
    torch.manual_seed(0)
    h_nat = torch.randn(64, 128) * 3 + 5  # penultimate-like features: a large common offset
    h_adv = h_nat + 0.05 * torch.randn_like(h_nat)  # near-diagonal costs
    a32, b32 = h_nat.clone().requires_grad_(True), h_adv.clone().requires_grad_(True)
    ref = ot_distance(a32, b32, cost=cost)
    ref.backward()
    a16, b16 = h_nat.clone().requires_grad_(True), h_adv.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ot_distance(a16, b16, cost=cost)
    got.backward()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=0.02)
    assert torch.allclose(a16.grad, a32.grad, rtol=0.05, atol=1e-3 * a32.grad.abs().max().item())
