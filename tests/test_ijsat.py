"""IJSAT mechanisms on digits: the flow is exactly invertible and learns the data, the joint
space attack respects both budgets and is at least as strong as pixel-only PGD, robust mixup
attacks the interpolate, a training step with mixup or a clean term moves the classifier and
never the flow, the flow's cache key ignores the classifier's recipe, and the flow component is
trained once when two trials ask for it at the same time. What every defense must do (the
default step, component keys free of searched values): tests/test_defenses.py."""
from __future__ import annotations

import copy
import dataclasses
import functools
import threading

import pytest
import torch
from torch.nn import functional

from raysearch import components, data
from raysearch.config import default_config
from raysearch.local import step_context
from trainables.base import sgd_step
from trainables.common import frozen, pgd_linf
from trainables.ijsat import IJSAT, GlowFlow, flow_setting, interpolate, joint_attack

pytestmark = pytest.mark.filterwarnings("ignore:torch.lu is deprecated")
DEFENSE = IJSAT()


def batches(digits):
    """The loader a component's ``fit`` gets: batches of a given size over the training split."""
    return functools.partial(data.shuffled_batches, digits.train)


def config(digits, **overrides):
    return dataclasses.replace(default_config("ijsat", digits.spec), **overrides)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """Flow (from the component cache, default digits architecture, half the passes) and a
    standard-trained classifier, both frozen."""
    torch.manual_seed(0)
    cfg = config(digits, flow_epochs=15)
    nets = DEFENSE.build(cfg, digits.spec)
    untrained_flow = copy.deepcopy(nets["flow"])
    components.ensure("ijsat", DEFENSE.pretrained(cfg, digits.spec), nets, cfg, digits.spec,
                      tmp_path_factory.mktemp("store"), batches(digits), torch.device("cpu"))
    f = nets["classifier"]
    opt = torch.optim.SGD(f.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(8):
        for x, y in batches(digits)(64):
            sgd_step(opt, functional.cross_entropy(f(x), y))
    return cfg, frozen(nets["flow"]), frozen(f), frozen(untrained_flow)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_flow_round_trip_is_exact_on_real_digits(digits, trained):
    _, flow, _, _ = trained
    x = digits.val.images()
    with torch.no_grad():
        z = flow.encode(x)
        x_back = flow.decode(z)
    assert isinstance(z, list) and len(z) == flow_setting(trained[0], digits.spec)["levels"]
    assert sum(t[0].numel() for t in z) == x[0].numel()  # a bijection keeps every dimension
    assert (x_back - x).abs().max().item() < 1 / 255


def test_flow_maximum_likelihood_fits_held_out_digits(digits, trained):
    _, flow, _, untrained = trained
    x = digits.val.images()
    with torch.no_grad():
        assert flow.nll(x).mean() < untrained.nll(x).mean() - 50  # nats per 64-pixel image


def test_joint_attack_stays_in_both_budgets_and_beats_pixel_pgd(digits, trained):
    _, flow, f, _ = trained
    x, y = digits.val.images(), digits.val.y
    eps_x, eps_z = 0.1, 0.05
    torch.manual_seed(1)
    x_adv, dz, dx = joint_attack(flow, f, x, y, eps_x, eps_z, 10, return_deltas=True)
    assert dx.abs().max() <= eps_x + 1e-6 and dx.abs().max() > eps_x / 2
    assert len(dz) == len(flow.encode(x[:1]))
    assert all(d.abs().max() <= eps_z + 1e-6 for d in dz)
    with torch.no_grad():
        on_manifold = flow.decode([t + d for t, d in zip(flow.encode(x), dz)]).clamp(0, 1)
    assert (x_adv - on_manifold).abs().max() <= eps_x + 1e-5  # the pixel part of x'
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    joint_acc = accuracy(f, x_adv, y)
    pgd_acc = accuracy(f, pgd_linf(f, x, y, eps_x, 10), y)
    assert accuracy(f, x, y) > 0.9
    assert joint_acc <= pgd_acc, (joint_acc, pgd_acc)


def test_on_manifold_attack_has_no_pixel_part_and_hurts(digits, trained):
    cfg, flow, f, _ = trained
    x, y = digits.val.images(), digits.val.y
    attack = DEFENSE.extra_attacks({"flow": flow, "classifier": f}, cfg)["on_manifold"]
    assert (attack.eps, attack.norm) == (cfg.eval_eps_z, "latent_linf")  # recorded, not the pixel ε
    x_adv = attack(f, x, y, 0.0)
    assert accuracy(f, x_adv, y) < accuracy(f, x, y) - 0.05
    torch.manual_seed(2)
    x_on, dz, dx = joint_attack(flow, f, x, y, 0.0, cfg.eval_eps_z, 5, return_deltas=True)
    assert dx.abs().max() == 0
    with torch.no_grad():
        decoded = flow.decode([t + d for t, d in zip(flow.encode(x), dz)]).clamp(0, 1)
    assert torch.allclose(x_on, decoded, atol=1e-6)


def test_robust_mixup_interpolates_then_attacks_the_interpolate(digits, trained):
    _, flow, f, _ = trained
    x, y = digits.val.images(torch.arange(64)), digits.val.y[:64]
    perm = torch.roll(torch.arange(64), 1)
    with torch.no_grad():
        z = flow.encode(x)
    lam = torch.rand(64)
    ends = [interpolate(flow, x, z, perm, torch.full((64,), v), "latent")[0] for v in (1.0, 0.0)]
    assert (ends[0] - x).abs().max() < 1 / 255 and (ends[1] - x[perm]).abs().max() < 1 / 255
    xm_pix, _ = interpolate(flow, x, None, perm, lam, "pixel")
    assert torch.allclose(xm_pix, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm])
    xm, zm = interpolate(flow, x, z, perm, lam, "latent")
    assert (xm - xm_pix).abs().max() > 0.05  # latent mixing is not pixel averaging
    # the attack starts from the interpolate: with zero budgets it returns it unchanged
    same = joint_attack(flow, f, xm, y, 0.0, 0.0, 3)
    assert torch.equal(same, xm)
    torch.manual_seed(3)
    x_adv, dz, dx = joint_attack(flow, f, xm, y, 0.05, 0.05, 3, z=zm, return_deltas=True)
    with torch.no_grad():
        base = flow.decode([t + d for t, d in zip(zm, dz)]).clamp(0, 1)
    assert (x_adv - base).abs().max() <= 0.05 + 1e-5 and (x_adv - xm).abs().max() > 0


def make_ctx(digits, trained, **overrides):
    cfg = dataclasses.replace(trained[0], batch_size=64, **overrides)
    torch.manual_seed(0)
    nets = DEFENSE.build(cfg, digits.spec)
    nets["flow"].load_state_dict(trained[1].state_dict())
    return step_context(DEFENSE, cfg, digits.spec, nets, total_steps=100, steps_per_epoch=10)


@pytest.mark.parametrize("overrides", [dict(mixup_prob=1.0), dict(mixup_prob=1.0, mixup_space="pixel"),
                                       dict(mixup_prob=0.0, clean_weight=0.5)])
def test_train_step_moves_the_classifier_never_the_flow(digits, trained, overrides):
    ctx = make_ctx(digits, trained, **overrides)
    before = {r: copy.deepcopy(m.state_dict()) for r, m in ctx.nets.items()}
    x, y = digits.train.images(torch.arange(64)), digits.train.y[:64]
    terms = DEFENSE.train_step(ctx, x, y)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values()), terms
    assert terms["mixed"] == float(overrides["mixup_prob"] == 1.0)
    assert (terms["mix_ce"] > 0) == (terms["mixed"] == 1.0)
    changed = {r: any(not torch.equal(before[r][k], v) for k, v in m.state_dict().items())
               for r, m in ctx.nets.items()}
    assert changed == {"classifier": True, "flow": False}


def test_flow_key_ignores_the_classifier_recipe(digits):
    """Searched values and the trial's length: the contract (tests/test_defenses.py)."""
    cfg = config(digits)
    varied = dataclasses.replace(cfg, lr=0.2, momentum=0.5, weight_decay=0.0)
    for a, b in zip(DEFENSE.pretrained(cfg, digits.spec), DEFENSE.pretrained(varied, digits.spec), strict=True):
        assert a.key == b.key


def test_two_concurrent_requests_train_the_flow_once(digits, tmp_path):
    cfg = config(digits, flow_epochs=2)
    results, states = [], []

    def trial():
        nets = DEFENSE.build(cfg, digits.spec)
        out = components.ensure("ijsat", DEFENSE.pretrained(cfg, digits.spec), nets, cfg, digits.spec,
                                tmp_path, batches(digits), torch.device("cpu"))
        results.append(out["flow"])
        states.append(nets["flow"].state_dict())

    threads = [threading.Thread(target=trial) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["loaded", "trained"]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


def test_flow_rejects_sizes_its_levels_cannot_squeeze():
    with pytest.raises(ValueError, match="divisible"):
        GlowFlow(1, 12, 3, 1, 8)
