"""AToP mechanisms on digits: the random transform is fresh on every call and erases whole
blocks, the pre-trained purifier reconstructs, the predictor averages its draws and its BPDA
variant passes f's gradient straight through, fine-tuning with PGD-EOT through g∘t moves
purifier and discriminator but never the classifier and hurts the pipeline, λ_cls warms up, and
the cached components are trained once when two trials ask for them at the same time, and a
data set's search space offers each mask block size once. What
every defense must do (randomized and attackable predictor, the default step, component keys):
tests/test_defenses.py."""
from __future__ import annotations

import copy
import dataclasses
import functools
import threading

import pytest
import torch

import search_spaces
from raysearch import components, data
from raysearch.config import default_config
from raysearch.local import step_context
from trainables.spec import DataSpec
from trainables.atop import AToP, block_px, random_transform

DEFENSE = AToP()


def batches(digits):
    """The loader a component's ``fit`` gets: batches of a given size over the training split."""
    return functools.partial(data.shuffled_batches, digits.train)


def config(digits, **overrides):
    return dataclasses.replace(default_config("atop", digits.spec), **overrides)


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory):
    """Classifier and purifier from the component cache (fewer passes than the defaults)."""
    torch.manual_seed(0)
    cfg = config(digits, cls_epochs=8, pretrain_epochs=20)
    nets = DEFENSE.build(cfg, digits.spec)
    status = components.ensure("atop", DEFENSE.pretrained(cfg, digits.spec), nets, cfg, digits.spec,
                               tmp_path_factory.mktemp("store"), batches(digits), torch.device("cpu"))
    assert status == {"classifier": "trained", "purifier": "trained"}
    return cfg, {r: m.eval() for r, m in nets.items()}


def test_transform_is_fresh_every_call_and_erases_whole_blocks(digits):
    x = digits.val.images(torch.arange(32))
    (a, mask_a), (b, mask_b) = (random_transform(x, 0.25, 0.25, 8) for _ in range(2))
    assert not torch.equal(a, b) and not torch.equal(mask_a, mask_b)
    side = block_px(8, 8)
    assert side == 2
    blocks = mask_a.unfold(2, side, side).unfold(3, side, side)  # N×1×4×4×2×2
    assert torch.equal(blocks.amin((-1, -2)), blocks.amax((-1, -2)))  # constant on each block
    assert torch.all(blocks.amax((-1, -2)).sum((1, 2, 3)) == round(0.25 * 16))
    assert torch.all(a[mask_a.expand_as(a) > 0] == 0) and a.min() >= 0 and a.max() <= 1
    clean, mask = random_transform(x, 0.0, 0.0, 4)
    assert torch.equal(clean, x) and mask.sum() == 0


def test_pretrained_purifier_reconstructs(digits, pretrained):
    cfg, nets = pretrained
    x = digits.val.images()
    torch.manual_seed(1)
    with torch.no_grad():
        for sigma, rate in [(cfg.noise_sigma, cfg.missing_rate), (0.5, 0.5)]:
            xt, mask = random_transform(x, sigma, rate, cfg.block)
            out = nets["purifier"](xt, mask)
            assert out.min() >= 0 and out.max() <= 1
            assert (out - x).abs().mean() < 0.8 * (xt - x).abs().mean(), (sigma, rate)


def test_predictor_averages_draws_and_classifies(digits, pretrained):
    cfg, nets = pretrained
    x, y = digits.val.images(), digits.val.y
    pred = DEFENSE.predictor(nets, cfg)
    with torch.no_grad():
        one = DEFENSE.predictor(nets, dataclasses.replace(cfg, n_masks=1)).model
        many = DEFENSE.predictor(nets, dataclasses.replace(cfg, n_masks=8)).model
        spread = [torch.stack([m(x) for _ in range(6)]).std(0).mean().item() for m in (one, many)]
        assert spread[1] < 0.6 * spread[0]  # 8 draws averaged: about 1/sqrt(8) of the spread
        assert (pred.model(x).argmax(1) == y).float().mean() > 0.6


def test_bpda_variant_passes_the_classifier_gradient_straight_through(digits, pretrained):
    """Same forward pass as the real pipeline under the same draws; in the backward pass g∘t is
    the identity, so the input gradient is f's gradient at the purified image."""
    cfg, nets = pretrained
    cfg = dataclasses.replace(cfg, n_masks=3)
    pred = DEFENSE.predictor(nets, cfg)
    assert pred.bpda is not None and pred.draws_per_call == 3
    assert [pred.calls(e) for e in (20, 3, 1)] == [7, 1, 1] and pred.draws(20) == 21
    x, y = digits.val.images(torch.arange(16)), digits.val.y[:16]
    xb = x.clone().requires_grad_(True)
    torch.manual_seed(5)
    out_bpda = pred.bpda(xb)
    (g_bpda,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out_bpda, y, reduction="sum"), xb)
    torch.manual_seed(5)
    reps = x.repeat(3, 1, 1, 1)
    xt, mask = random_transform(reps, cfg.noise_sigma, cfg.missing_rate, cfg.block)
    purified = nets["purifier"](xt, mask).detach().requires_grad_(True)
    out = nets["classifier"](purified).view(3, 16, -1).mean(0)
    (g_f,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y, reduction="sum"), purified)
    assert torch.allclose(out_bpda, out, atol=1e-5)
    assert torch.allclose(g_bpda, g_f.view(3, 16, *x.shape[1:]).sum(0), atol=1e-6)
    torch.manual_seed(5)
    (g_real,) = torch.autograd.grad(torch.nn.functional.cross_entropy(pred.model(xb), y, reduction="sum"), xb)
    assert not torch.allclose(g_real, g_bpda, atol=1e-4)  # the real backward pass goes through g


def make_ctx(digits, pretrained, step=0, **overrides):
    cfg = dataclasses.replace(pretrained[0], batch_size=64, **overrides)
    nets = DEFENSE.build(cfg, digits.spec)
    for role, m in nets.items():
        m.load_state_dict(pretrained[1][role].state_dict())
    return step_context(DEFENSE, cfg, digits.spec, nets, total_steps=100, steps_per_epoch=10, step=step)


def test_fine_tuning_through_the_pipeline_moves_purifier_and_discriminator_never_the_classifier(
        digits, pretrained):
    """The default (FGSM on the classifier) is the contract's step; this is PGD-EOT through g∘t."""
    ctx = make_ctx(digits, pretrained, ft_attack="pgd_eot_through", ft_attack_steps=2)
    before = {r: copy.deepcopy(m.state_dict()) for r, m in ctx.nets.items()}
    x, y = digits.train.images(torch.arange(64)), digits.train.y[:64]
    terms = DEFENSE.train_step(ctx, x, y)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values()), terms
    assert terms["ce_adv"] > 0 and terms["l1_adv"] > 0
    changed = {r: any(not torch.equal(before[r][k], v) for k, v in m.state_dict().items())
               for r, m in ctx.nets.items()}
    assert changed == {"classifier": False, "purifier": True, "discriminator": True}


def test_fine_tuning_attack_hurts_the_pipeline(digits, pretrained):
    """x' crafted through g∘t lowers the purified accuracy more than the clean input does."""
    ctx = make_ctx(digits, pretrained, ft_attack="pgd_eot_through", ft_attack_steps=5, ft_eot=2)
    x, y = digits.val.images(), digits.val.y
    torch.manual_seed(4)
    x_adv = DEFENSE.adversarial(ctx, x, y)
    assert (x_adv - x).abs().max() <= ctx.cfg.eps_train + 1e-6
    model = DEFENSE.predictor(ctx.raw, dataclasses.replace(ctx.cfg, n_masks=8)).model
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
        adv = (model(x_adv).argmax(1) == y).float().mean()
    assert adv < clean - 0.1, (clean, adv)


def test_lambda_cls_warms_up(digits, pretrained):
    x, y = digits.train.images(torch.arange(32)), digits.train.y[:32]
    ramp = [DEFENSE.train_step(make_ctx(digits, pretrained, step=s, warmup_epochs=2.0), x, y)["lambda_cls"]
            for s in (0, 9, 19, 40)]
    lam = pretrained[0].lambda_cls
    assert ramp[0] < ramp[1] < ramp[2] == ramp[3] == pytest.approx(lam)
    assert ramp[0] == pytest.approx(lam / 20)


def test_two_concurrent_requests_train_each_component_once(digits, tmp_path):
    cfg = config(digits, cls_epochs=1, pretrain_epochs=1)
    results, states = [], []

    def trial():
        nets = DEFENSE.build(cfg, digits.spec)
        results.append(components.ensure("atop", DEFENSE.pretrained(cfg, digits.spec), nets, cfg, digits.spec,
                                         tmp_path, batches(digits), torch.device("cpu")))
        states.append({r: m.state_dict() for r, m in nets.items()})

    threads = [threading.Thread(target=trial) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("classifier", "purifier"):
        assert sorted(r[name] for r in results) == ["loaded", "trained"]
    for role in ("classifier", "purifier", "discriminator"):
        assert all(torch.equal(v, states[1][role][k]) for k, v in states[0][role].items())


@pytest.mark.parametrize("size", sorted({spec.size for spec in data.SPECS.values()} | {16, 64}))
def test_a_data_sets_space_offers_each_block_size_once(size):
    """Searched blocks are written at 32×32; where two come to one pixel side (1, 2 and 4 are
    all 1 px on 8×8 digits) the space keeps one of them, and still every side, and the default."""
    spec = DataSpec("d", 1, size, 10, (0.5,), (0.5,), eps_eval=0.1, eps_eval_l2=0.5, eps_scale=1.0)
    written = search_spaces.load("atop")
    choices = DEFENSE.search_space(written, spec)["block"]["choices"]
    sides = [block_px(b, size) for b in choices]
    assert len(set(sides)) == len(sides), (size, choices, sides)
    assert set(sides) == {block_px(b, size) for b in written["block"]["choices"]}
    default = default_config("atop", spec)
    assert block_px(default.block, size) in sides
    assert search_spaces.contains(search_spaces.to_optuna({"block": {**written["block"], "choices": choices}})["block"],
                                  default.block)


def test_the_spaces_blocks_on_the_built_in_data_sets():
    blocks = {name: DEFENSE.search_space(search_spaces.load("atop"), spec)["block"]["choices"]
              for name, spec in data.SPECS.items()}
    assert blocks["digits"] == [4, 8]  # 1 and 2 px
    assert all(blocks[n] == [1, 2, 4, 8] for n in ("cifar10", "svhn", "mnist", "fashion_mnist"))
