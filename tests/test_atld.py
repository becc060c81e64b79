"""atld mechanisms: the discriminator learns to tell natural from perturbed latents, the
unsupervised latent attack stays in the ε-ball and makes its latent look more perturbed to D,
the IMT step is bounded and attackable, and each part of the update moves exactly the network
it trains (the whole step: tests/test_defenses.py). Tiny runs on the bundled digits."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import changed, fresh_context, params
from trainables import REGISTRY
from trainables.atld import IMTPredictor, bce_nat_adv, latent_attack, latent_of, latent_step_size
from trainables.common import eval_mode

DEFENSE = REGISTRY["atld"]


@pytest.fixture(scope="module")
def examples(digits):
    """(spec, images, labels): the first 192 training examples."""
    return digits.spec, digits.train.images(torch.arange(192)), digits.train.y[:192]


def make_ctx(spec, seed=0, **changes):
    return fresh_context(DEFENSE, spec, seed, **changes)


def pretrained_ctx(spec, x, y, **changes):
    """A classifier trained a few steps so its latents carry class information."""
    ctx = make_ctx(spec, **changes)
    for _ in range(12):
        DEFENSE.classifier_step(ctx, x[:96], x[:96], y[:96])
    return ctx


def d_accuracy(ctx, x_nat, x_adv):
    f, d, lat = ctx.raw["classifier"], ctx.raw["discriminator"], ctx.cfg.latent
    with torch.no_grad(), eval_mode(f, d):
        dn, _ = d(latent_of(f, x_nat, lat))
        da, _ = d(latent_of(f, x_adv, lat))
    return ((dn > 0).float().mean() + (da < 0).float().mean()).item() / 2


@pytest.mark.parametrize("latent", ["logits", "features"])
def test_discriminator_separates_natural_from_adversarial_latents(examples, latent):
    spec, x, y = examples
    ctx = pretrained_ctx(spec, x, y, latent=latent, d_lr=0.02)
    f = ctx.raw["classifier"]
    train, held = slice(0, 96), slice(96, 192)
    x_adv = DEFENSE.attack(ctx, x)
    f_before = params(f)
    with torch.no_grad(), eval_mode(f):
        z_nat, z_adv = latent_of(f, x[train], latent), latent_of(f, x_adv[train], latent)
    assert d_accuracy(ctx, x[held], x_adv[held]) == pytest.approx(0.5, abs=0.15)
    for _ in range(15):
        terms = DEFENSE.discriminator_step(ctx, z_nat, z_adv, y[train])
    assert d_accuracy(ctx, x[held], x_adv[held]) > 0.7  # held-out examples, chance is 0.5
    assert terms["d_bce"] < 2 * torch.log(torch.tensor(2.0)).item()
    assert not changed(f_before, f)


def test_latent_attack_stays_in_ball_and_lowers_discriminator_bce(examples):
    spec, x, y = examples
    ctx = pretrained_ctx(spec, x, y, d_lr=0.02)
    f, d, eps = ctx.raw["classifier"], ctx.raw["discriminator"], ctx.cfg.eps_train
    DEFENSE.train_step(ctx, x[:96], y[:96])  # D has seen one batch
    for p in (*f.parameters(), *d.parameters()):
        p.grad = None
    with eval_mode(f, d):
        torch.manual_seed(5)
        start = latent_attack(f, d, x, eps, 0)
        torch.manual_seed(5)  # the same random start, then one signed step
        x_adv = latent_attack(f, d, x, eps, 1)
        with torch.no_grad():
            bce_start = bce_nat_adv(None, d(latent_of(f, start, "logits"))[0]).item()
            bce_adv = bce_nat_adv(None, d(latent_of(f, x_adv, "logits"))[0]).item()
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(start, x_adv)
    assert bce_adv < bce_start  # the perturbed latent looks more "perturbed" to D
    assert all(p.grad is None for p in (*f.parameters(), *d.parameters()))
    assert f.training and d.training


@pytest.mark.parametrize("mode", ["uniform", "banded"])
def test_imt_step_is_bounded_moves_toward_natural_and_is_attackable(examples, mode):
    spec, x, y = examples
    ctx = pretrained_ctx(spec, x, y, d_lr=0.02, imt=mode)
    for _ in range(3):
        DEFENSE.train_step(ctx, x[:96], y[:96])
    for m in ctx.raw.values():
        m.zero_grad(set_to_none=True)
    pred = DEFENSE.predictor(ctx.raw, ctx.cfg)
    assert isinstance(pred.model, IMTPredictor) and pred.bpda is not None
    for m in ctx.raw.values():
        m.eval()
    step, xs = ctx.cfg.imt_step, x[:64]
    with torch.no_grad():
        moved = pred.model.purify(xs)
        logits = pred.model(xs)
    assert (moved - xs).abs().max() <= step + 1e-6
    assert (moved - xs).abs().amax((1, 2, 3)).min() > 0
    f, d = ctx.raw["classifier"], ctx.raw["discriminator"]
    with torch.no_grad():
        before, after = (torch.sigmoid(d(latent_of(f, v, "logits"))[0]).mean() for v in (xs, moved))
    assert after > before  # D finds the moved input more natural
    if mode == "banded":
        with torch.no_grad():
            p = torch.sigmoid(d(latent_of(f, xs, "logits"))[0])
        in_band = (p > 0.3) & (p < 0.7)
        size = (moved - xs).abs().amax((1, 2, 3))
        assert (size[in_band] <= step / 2 + 1e-6).all() and (size[~in_band] > step / 2).all()
    for model in (pred.model, pred.bpda):
        xg = xs.clone().requires_grad_(True)
        out = model(xg)
        assert torch.allclose(out, logits, atol=1e-5)  # same prediction with and without grad
        g = torch.autograd.grad(out.gather(1, y[:64, None]).sum(), xg)[0]
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert all(p.grad is None for p in (*f.parameters(), *d.parameters()))


def test_imt_off_deploys_the_bare_classifier(examples):
    spec, _, _ = examples
    ctx = make_ctx(spec)
    pred = DEFENSE.predictor(ctx.raw, ctx.cfg)
    assert pred.model is ctx.raw["classifier"] and pred.bpda is None and not pred.randomized


def test_attack_and_classifier_step_move_only_what_is_due(examples):
    spec, x, y = examples
    ctx = make_ctx(spec)
    f, d = ctx.raw["classifier"], ctx.raw["discriminator"]
    f_before, d_before = params(f), params(d)
    x_adv = DEFENSE.attack(ctx, x[:96])
    assert not changed(f_before, f) and not changed(d_before, d)
    terms, z_nat, z_adv = DEFENSE.classifier_step(ctx, x[:96], x_adv, y[:96])
    assert changed(f_before, f) and not changed(d_before, d)
    assert terms["balance"] > 0 and not z_nat.requires_grad and not z_adv.requires_grad
    terms = DEFENSE.train_step(ctx, x[:96], y[:96])
    assert set(terms) >= {"loss", "ce", "mse", "balance", "d_bce", "d_cls", "d_acc"}
    assert set(DEFENSE.trainable(ctx.cfg)) == set(DEFENSE.build(ctx.cfg, spec))  # nothing frozen


def test_latent_attack_step_is_eps_for_one_step_and_two_and_a_half_eps_over_k_for_more(examples):
    """ε for one step (the reference's), 2.5·ε/k for k > 1; with k steps the batch stays in the
    ball and in [0, 1]."""
    assert latent_step_size(0.1, 1) == 0.1
    assert latent_step_size(0.1, 2) == pytest.approx(0.125) and latent_step_size(0.1, 3) == pytest.approx(0.25 / 3)
    spec, x, y = examples
    ctx = pretrained_ctx(spec, x, y, d_lr=0.02)
    f, d, eps = ctx.raw["classifier"], ctx.raw["discriminator"], ctx.cfg.eps_train
    with eval_mode(f, d):
        x_adv = latent_attack(f, d, x[:64], eps, 3)
    moved = (x_adv - x[:64]).abs()
    assert (moved <= eps + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1


def test_the_default_config_learns_digits_and_its_logits_stay_bounded(digits):
    """At its defaults (γ 0.5 with the adaptive balance, label smoothing 0.5) on digits: four
    epochs of a ten-epoch schedule, the whole step (attack, classifier, discriminator). The
    classifier learns and its logits stay small. With the held-fixed target f(x) taken from one
    training pass over [x, x_adv], the MSE's gradient moved the shared batch statistics that made
    the target: the logits blew up in the third epoch and accuracy fell to chance."""
    from raysearch.config import default_config
    from raysearch.local import step_context

    torch.manual_seed(0)
    cfg = default_config("atld", digits.spec)
    x_all, y_all = digits.train.images(), digits.train.y
    per_epoch = -(-len(y_all) // cfg.batch_size)
    ctx = step_context(DEFENSE, cfg, digits.spec, DEFENSE.build(cfg, digits.spec),
                       total_steps=cfg.epochs * per_epoch, steps_per_epoch=per_epoch)
    for _ in range(4):
        perm = torch.randperm(len(y_all))
        for i in range(0, len(y_all), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            terms = DEFENSE.train_step(ctx, x_all[idx], y_all[idx])
            assert terms["ce"] < 3.0, terms  # chance is ln 10 ≈ 2.3; the blow-up passed 10
    f = ctx.raw["classifier"].eval()
    with torch.no_grad():
        logits = f(digits.val.images())
    accuracy = (logits.argmax(1) == digits.val.y).float().mean().item()
    assert accuracy > 0.8, accuracy
    assert logits.abs().mean() < 5.0, logits.abs().mean()
