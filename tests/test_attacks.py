"""The attack suite on a small CNN trained for a few seconds on digits (ε_eval 0.2 there).

``TestAttack`` is the contract of every registered attack, run with the cheap settings of
``CHEAP``: a detached image batch in [0, 1], within its budget, deterministic for a seed with no
global RNG use, not raising the accuracy of an undefended model (and lowering it, unless it is a
corruption), runnable against a randomized model or declared not to be. The tests after it are
about single attacks: robust accuracy does not rise with ε or steps, reaches ~0% unbounded, PGD
drives the undefended model to ~0%; APGD follows the reference schedule and is at least as
strong as torchattacks'; the geometry of StAdv, ReColor, JPEG and the corruptions.
"""
from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
from torch import nn
from torch.nn import functional

from raysearch import attacks, data
from raysearch.attacks import AttackSpec, core, corruptions
from raysearch.local import standard_classifier
from raysearch.schema import Threat

# the package exports the attack functions under their modules' names; fetch the modules
apgd_module, jpeg, recolor, square, stadv = (importlib.import_module(f"raysearch.attacks.{name}")
                                             for name in ("apgd", "jpeg", "recolor", "square", "stadv"))

N = 64  # test images per attack
# the contract does not depend on the iteration or query budget: every registered parameter of
# these names is set to this value (full budgets would dominate the test time)
CHEAP = {"steps": 10, "restarts": 1, "n_iter": 10, "n_targets": 3, "n_queries": 100}


@pytest.fixture(scope="module")
def model(digits):
    """Undefended small CNN, ~97% clean on digits after 6 epochs (a few seconds on 2 cores)."""
    return standard_classifier(digits, epochs=6, batch_size=64)


@pytest.fixture(scope="module")
def batch(digits, model):
    """Correctly classified test images (attacks are run on those)."""
    x, y = data.eval_subset(digits.test, 2 * N, seed=1)
    correct = core.predict(model, x) == y
    return x[correct][:N], y[correct][:N]


def acc(model, x, y) -> float:
    return (core.predict(model, x) == y).float().mean().item()


class Noisy(nn.Module):
    """A randomized model: Gaussian noise on the input before the classifier."""

    def __init__(self, model: nn.Module, sigma: float):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def cheap(attack: AttackSpec) -> AttackSpec:
    """The attack with every parameter named in CHEAP (its randomized overrides too) set cheap."""
    def cheapened(params):
        return None if params is None else {k: CHEAP.get(k, v) for k, v in params.items()}

    return dataclasses.replace(attack, params=cheapened(attack.params), randomized=cheapened(attack.randomized))


def within_budget(attack: AttackSpec, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    """x_adv is in the attack's ε-ball around x, for the norms a pixel distance measures."""
    delta = (x_adv - x).flatten(1)
    if attack.norm in ("linf", "colour"):  # a colour map moves each value by at most ε
        return bool(delta.abs().max() <= eps + 1e-6)
    if attack.norm == "l2":
        return bool(delta.norm(dim=1).max() <= eps + 1e-5)
    return True  # flow, DCT: their own tests below; corruptions: no budget


@dataclasses.dataclass
class Attacked:
    """One run of a cheap attack on the batch: the attack, its ε, the global RNG state before
    and after, the images."""

    attack: AttackSpec
    eps: float
    rng_before: torch.Tensor
    rng_after: torch.Tensor
    x_adv: torch.Tensor


@pytest.fixture(scope="module", params=sorted(attacks.ATTACKS))
def attacked(request, model, batch, digits) -> Attacked:
    attack = cheap(attacks.ATTACKS[request.param])
    x, y = batch
    eps = attacks.budget(attack, digits.spec)
    rng_before = torch.get_rng_state()
    x_adv = attacks.run(attack, model, x, y, eps, seed=3)
    return Attacked(attack, eps, rng_before, torch.get_rng_state(), x_adv)


class TestAttack:
    def test_is_registered_as_plain_data(self, attacked):
        attack = attacked.attack
        assert attacks.ATTACKS[attack.name].name == attack.name
        assert attack.threat in tuple(Threat) and attack.threat != Threat.CLEAN
        assert attack.budget[0] in attacks.BUDGET_KINDS
        if attack.threat == Threat.SEEN:
            assert attack.norm == "linf" and attack.budget == ("eps_eval", 1.0)

    def test_returns_a_detached_image_batch(self, attacked, batch):
        x, _ = batch
        x_adv = attacked.x_adv
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        assert x_adv.min() >= 0 and x_adv.max() <= 1

    def test_stays_within_its_budget(self, attacked, batch):
        assert within_budget(attacked.attack, attacked.x_adv, batch[0], attacked.eps)

    def test_is_deterministic_for_a_seed_and_uses_no_global_rng(self, attacked, model, batch):
        assert torch.equal(attacked.rng_before, attacked.rng_after), "attacks must use their own generator"
        x, y = batch[0][:8], batch[1][:8]
        runs = [attacks.run(attacked.attack, model, x, y, attacked.eps, seed=3) for _ in range(2)]
        assert torch.equal(*runs)

    def test_does_not_raise_the_accuracy_of_an_undefended_model(self, attacked, model, batch):
        x, y = batch
        clean, attacked_acc = acc(model, x, y), acc(model, attacked.x_adv, y)
        assert attacked_acc <= clean
        if attacked.attack.family != "corruption":
            assert attacked_acc < clean, f"{attacked.attack.name} fooled no image of an undefended model"

    def test_runs_on_a_randomized_model_or_declares_it_does_not(self, attacked, model, batch):
        attack, noisy = attacked.attack, Noisy(model, 0.1)
        x, y = batch[0][:16], batch[1][:16]
        if attack.randomized is None:
            with pytest.raises(ValueError, match="not run on randomized predictors"):
                attacks.run(attack, noisy, x, y, attacked.eps, eot=2, randomized=True)
            return
        x_adv = attacks.run(attack, noisy, x, y, attacked.eps, eot=2, randomized=True)
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and within_budget(attack, x_adv, x, attacked.eps)


def test_default_suite_holds_the_standard_attacks_at_their_standard_settings():
    seen = {name for name in attacks.DEFAULT_SUITE if attacks.ATTACKS[name].threat == Threat.SEEN}
    assert {"pgd_ce", "pgd_cw", "apgd_ce", "apgd_dlr", "square"} <= seen
    assert attacks.ATTACKS["apgd_ce"].params["n_iter"] == 100
    assert attacks.ATTACKS["square"].params == {"n_queries": 5000, "p_init": 0.8}


def test_pgd_drives_undefended_model_to_zero(model, batch, digits):
    x, y = batch
    x_adv = attacks.run(attacks.ATTACKS["pgd_ce"], model, x, y, digits.spec.eps_eval)
    assert acc(model, x_adv, y) <= 0.05


@pytest.mark.parametrize("fn,kw,eps", [
    (attacks.pgd, {"steps": 20}, 1.0),
    (attacks.apgd, {"n_iter": 20}, 1.0),
    (attacks.pgd, {"steps": 20, "norm": "l2"}, 8.0),  # 8 = the L2 diameter of an 8×8 image in [0, 1]
    (attacks.apgd, {"n_iter": 20, "norm": "l2"}, 8.0),
    (attacks.jpeg, {"steps": 20}, 8.0),
])
def test_unbounded_attack_reaches_zero(fn, kw, eps, model, batch):
    x, y = batch
    assert acc(model, fn(model, x, y, eps, **kw), y) <= 0.02


@pytest.mark.parametrize("name", ["pgd_ce", "apgd_ce", "pgd_l2", "stadv", "recolor", "jpeg"])
def test_accuracy_does_not_rise_with_eps(name, model, batch, digits):
    attack = attacks.ATTACKS[name]
    x, y = batch
    eps = attacks.budget(attack, digits.spec)
    params = {k: min(v, 20) if k in ("steps", "n_iter") else v for k, v in attack.params.items()}
    params["restarts"] = 1 if "restarts" in params else None
    params = {k: v for k, v in params.items() if v is not None}
    accs = [acc(model, attack.fn(model, x, y, f * eps, **params), y) for f in (0.25, 0.5, 1.0)]
    tol = 2 / len(y)
    assert accs[0] >= accs[1] - tol and accs[1] >= accs[2] - tol, accs
    assert accs[0] > accs[2], f"{name}: ε has no effect ({accs})"


def test_accuracy_does_not_rise_with_steps(model, batch, digits):
    x, y = batch
    eps = 0.1  # half of ε_eval, so that the steps matter
    accs = [acc(model, attacks.pgd(model, x, y, eps, steps=s), y) for s in (1, 5, 20)]
    tol = 2 / len(y)
    assert accs[0] >= accs[1] - tol and accs[1] >= accs[2] - tol, accs
    accs = [acc(model, attacks.apgd(model, x, y, eps, n_iter=s), y) for s in (2, 10, 40)]
    assert accs[0] >= accs[1] - tol and accs[1] >= accs[2] - tol, accs


def test_apgd_reference_schedule():
    assert apgd_module.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert square.p_selection(0.8, 0, 5000) == 0.8
    assert square.p_selection(0.8, 6, 5000) == 0.4  # after 0.1% of the budget
    assert square.p_selection(0.8, 4999, 5000) == 0.8 / 512


def test_apgd_at_least_as_strong_as_torchattacks(model, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    eps = 0.08  # leaves a share of images robust so that the comparison means something
    ours = acc(model, attacks.apgd(model, x, y, eps, n_iter=100), y)
    ref = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)
    theirs = acc(model, ref(x, y), y)
    assert ours <= theirs + 2 / len(y), (ours, theirs)


def test_early_stop_keeps_the_result(model, batch):
    """For a deterministic model, dropping fooled images must not change who is fooled."""
    x, y = batch
    a = attacks.pgd(model, x, y, 0.1, steps=10, early_stop=True)
    b = attacks.pgd(model, x, y, 0.1, steps=10, early_stop=False)
    assert torch.equal(core.predict(model, a) == y, core.predict(model, b) == y)
    a = attacks.apgd(model, x, y, 0.1, n_iter=20, early_stop=True)
    b = attacks.apgd(model, x, y, 0.1, n_iter=20, early_stop=False)
    assert torch.equal(core.predict(model, a) == y, core.predict(model, b) == y)


def test_eot_averages_draws(model, batch):
    x, y = batch
    noisy = Noisy(model, 0.3)
    z = core.draws(noisy, x[:4], 6)
    assert z.shape == (6, 4, 10)
    assert not torch.allclose(z[0], z[1]), "draws must be independent"
    # the EOT gradient is the mean of per-draw gradients: it approaches the smooth expectation,
    # so 32 draws agree in sign with another 32 draws far more than single draws do
    loss = core.LOSSES["ce"]
    x, y = x[:16], y[:16]
    g1 = [core.loss_grad(noisy, x, y, loss, 1)[1] for _ in range(2)]
    g64 = [core.loss_grad(noisy, x, y, loss, 32)[1] for _ in range(2)]
    agree = lambda a, b: (a.sign() == b.sign()).float().mean().item()  # noqa: E731
    assert agree(*g64) > agree(*g1) + 0.1


def test_eot_strengthens_attack_on_randomized_model(model, batch):
    x, y = batch
    x, y = x[:32], y[:32]
    noisy = Noisy(model, 0.3)
    torch.manual_seed(0)
    plain = (core.predict(noisy, attacks.pgd(noisy, x, y, 0.1, steps=5, eot=1), eot=32) == y).float().mean()
    torch.manual_seed(0)
    eot = (core.predict(noisy, attacks.pgd(noisy, x, y, 0.1, steps=5, eot=8), eot=32) == y).float().mean()
    assert eot <= plain


@pytest.mark.parametrize("fn,kw,eps", [(attacks.pgd, {"steps": 20}, 1.0), (attacks.apgd, {"n_iter": 20}, 1.0)])
def test_randomized_model_attacks_survive_fresh_draws(fn, kw, eps, model, batch):
    """Against a randomized model an unbounded attack must return points that fool fresh draws,
    not the first iterate that fooled one set of draws (a marginal point: returning it left
    ~20% of these images correctly classified under fresh draws)."""
    x, y = batch
    x, y = x[:32], y[:32]
    noisy = Noisy(model, 0.5)
    torch.manual_seed(0)
    x_adv = fn(noisy, x, y, eps, eot=8, **kw)
    assert (core.predict(noisy, x_adv, eot=32) != y).float().mean().item() >= 0.95


def test_stadv_is_a_bounded_smooth_warp(batch):
    x, _ = batch
    assert torch.allclose(stadv.warp(x, torch.zeros(len(x), 2, 8, 8)), x, atol=1e-6)
    shift = torch.zeros(len(x), 2, 8, 8)
    shift[:, 0] = 1.0  # sample one pixel to the right
    assert torch.allclose(stadv.warp(x, shift)[..., :-1], x[..., 1:], atol=1e-6)
    rough = torch.randn(1, 2, 8, 8)
    assert stadv.flow_smoothness(rough) > stadv.flow_smoothness(torch.full((1, 2, 8, 8), 0.5))


def test_stadv_changes_pixels_only_by_interpolation(model, batch):
    x, y = batch
    e = 0.25
    x_adv = attacks.stadv(model, x, y, e, steps=20)
    # a displacement ≤ e per axis mixes a pixel with its neighbours by weight ≤ 1 − (1 − e)²
    pad = functional.pad(x, (1, 1, 1, 1), mode="replicate")
    local = functional.max_pool2d(pad, 3, 1) - (-functional.max_pool2d(-pad, 3, 1))
    assert ((x_adv - x).abs() <= (1 - (1 - e) ** 2) * local + 1e-5).all()
    assert (x_adv != x).any()


def test_recolor_is_a_function_of_colour(model, batch):
    x, y = batch
    x_adv = attacks.recolor(model, x, y, 0.3, steps=10)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    for i in range(len(x)):  # equal input values map to equal output values within an image
        for v in x[i].unique():
            assert x_adv[i][x[i] == v].unique().numel() == 1
    rgb = torch.rand(2, 3, 4, 4)
    assert torch.allclose(recolor.apply_colour_map(rgb, torch.zeros(2, 3, 5, 5, 5)), rgb)


def test_jpeg_dct_is_orthonormal_and_bounded(model, batch):
    x, y = batch
    c = torch.randn(3, 3, 16, 16)
    assert torch.allclose(jpeg.block_idct(jpeg.block_dct(c)), c, atol=1e-5)
    assert torch.allclose(jpeg.block_dct(c).norm(), c.norm(), rtol=1e-5)
    assert torch.allclose(jpeg.from_ycbcr(jpeg.to_ycbcr(c)), c, atol=1e-5)
    # on mid-grey images no clipping occurs, so the coefficient bound is exact
    mid = 0.3 + 0.4 * x
    eps = 0.01
    x_adv = attacks.jpeg(model, mid, y, eps, steps=5)
    assert jpeg.block_dct(x_adv - mid).abs().max() <= eps + 1e-5


def test_corruptions_grow_with_severity(batch):
    x, _ = batch
    for kind in corruptions.CORRUPTIONS:
        deviation = [(attacks.corrupt(None, x, None, kind=kind, severity=severity, seed=0) - x).abs().mean().item()
                     for severity in (1, 3, 5)]
        assert deviation[0] < deviation[1] < deviation[2], (kind, deviation)
    with pytest.raises(ValueError):
        attacks.corrupt(None, x, None, kind="snow", severity=1)


def test_budget_kinds(digits):
    spec = digits.spec
    assert attacks.budget(attacks.ATTACKS["pgd_ce"], spec) == spec.eps_eval
    assert attacks.budget(attacks.ATTACKS["pgd_ce"], spec, 0.1) == 0.1
    assert attacks.budget(attacks.ATTACKS["pgd_l2"], spec) == spec.eps_eval_l2
    assert attacks.budget(attacks.ATTACKS["stadv"], spec) == spec.size / 32
    assert math.isclose(attacks.budget(attacks.ATTACKS["recolor"], spec), 0.06 * spec.eps_scale)
    assert math.isnan(attacks.budget(attacks.ATTACKS["fog_s1"], spec))
    assert attacks.budget(attacks.ATTACKS["pgd_unbounded"], spec) == 1.0
