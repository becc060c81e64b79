"""IJSAT mechanisms on digits: the flow is exactly invertible and learns the data, the joint
space attack respects both budgets and is at least as strong as pixel-only PGD, robust mixup
attacks the interpolate, a training step with mixup or a clean term moves the classifier and
never the flow, the flow's cache key ignores the classifier's recipe, and the flow component is
trained once when two trials ask for it at the same time. The gate before caching refuses an
untrained or damaged flow and accepts a trained one, the round trip holds on a CIFAR-shaped
flow, and the ε_z calibration is stored with the flow and turns a radius in pixel units into
the same pixel displacement for an 8×8 and a 32×32 flow. What every defense must do (the
default step, component keys free of searched values): tests/test_defenses.py."""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import threading

import pytest
import torch
from torch.nn import functional

from raysearch import components, data
from raysearch.config import default_config
from raysearch.local import step_context
from trainables import ijsat
from trainables.base import sgd_step
from trainables.common import frozen, pgd_linf
from trainables.ijsat import IJSAT, interpolate, joint_attack
from trainables.ijsat_flow import MAX_BITS_PER_DIM, FlowRefused, GlowFlow, check_flow, fit_flow, flow_setting

pytestmark = pytest.mark.filterwarnings("ignore:torch.lu is deprecated")
DEFENSE = IJSAT()


def batches(digits):
    """The loader a component's ``fit`` gets: batches of a given size over the training split."""
    return functools.partial(data.shuffled_batches, digits.train)


def config(digits, **overrides):
    return dataclasses.replace(default_config("ijsat", digits.spec), **overrides)


@pytest.fixture(scope="module")
def flow_store(tmp_path_factory):
    """The component cache that holds the ``trained`` flow."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def trained(digits, flow_store):
    """Flow (from the component cache, default digits architecture, half the passes, gated and
    calibrated on the validation split) and a standard-trained classifier, both frozen."""
    torch.manual_seed(0)
    cfg = config(digits, flow_epochs=15)
    nets = DEFENSE.build(cfg, digits.spec)
    untrained_flow = copy.deepcopy(nets["flow"])
    components.ensure("ijsat", DEFENSE.pretrained(cfg, digits.spec), nets, cfg, digits.spec, flow_store,
                      batches(digits), torch.device("cpu"), held_out=digits.val.images())
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
    assert (attack.eps, attack.norm) == (cfg.eval_eps_z_pixel, "latent_px")  # recorded, not the pixel ε
    x_adv = attack(f, x, y, 0.0)
    assert accuracy(f, x_adv, y) < accuracy(f, x, y) - 0.05
    torch.manual_seed(2)
    x_on, dz, dx = joint_attack(flow, f, x, y, 0.0, flow.latent_radius(cfg.eval_eps_z_pixel), 5, return_deltas=True)
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
    cfg = config(digits, flow_epochs=2, flow_max_bits_per_dim=8.0)  # a short fit, a loose gate
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


# ---------------------------------------------------------------- the gate and the ε_z calibration

def cifar_flow_and_images(n: int = 64):
    """A small CIFAR-shaped (3×32×32, three levels) flow after one pass of maximum likelihood on
    ``n`` synthetic 8-bit images (smooth colour fields), and those images."""
    torch.manual_seed(0)
    spec = data.describe("cifar10")
    coarse = torch.rand(n, 3, 4, 4)
    x = (functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False) * 255).round() / 255
    cfg = dataclasses.replace(default_config("ijsat", spec), flow_blocks=1, flow_hidden=16, flow_epochs=1,
                              flow_batch_size=16, flow_max_bits_per_dim=16.0)
    nets = {"flow": GlowFlow(3, 32, **{k: v for k, v in flow_setting(cfg, spec).items() if k != "epochs"})}
    fit_flow(nets, cfg, spec, lambda size: zip(x.split(size), x.split(size)), torch.device("cpu"))
    return cfg, spec, nets, x


@pytest.fixture(scope="module")
def cifar_flow():
    return cifar_flow_and_images()


def test_round_trip_holds_at_cifar_shape(cifar_flow):
    cfg, spec, nets, x = cifar_flow
    assert flow_setting(cfg, spec)["levels"] == 3
    report = check_flow(nets, cfg, spec, x, torch.device("cpu"))
    assert report["round_trip"] < 1 / 255 and report["n"] == len(x)
    with torch.no_grad():
        assert (nets["flow"].decode(nets["flow"].encode(x)) - x).abs().max() < 1 / 255


def test_gate_refuses_an_untrained_flow_and_caches_nothing(digits, tmp_path):
    cfg = config(digits)
    nets = DEFENSE.build(cfg, digits.spec)
    (comp,) = DEFENSE.pretrained(cfg, digits.spec)
    untrained = dataclasses.replace(comp, fit=lambda *args: None)
    with pytest.raises(FlowRefused, match=r"bits/dim on 180 images, above the bound 3.5 for digits") as e:
        components.ensure("ijsat", [untrained], nets, cfg, digits.spec, tmp_path, batches(digits),
                          torch.device("cpu"), held_out=digits.val.images())
    assert "\n" not in str(e.value)
    assert not list(tmp_path.rglob("weights.pt")) and float(nets["flow"].pixel_per_latent) == 0


def test_gate_refuses_damaged_weights_and_accepts_the_trained_flow(digits, trained):
    cfg, flow, _, _ = trained
    x = digits.val.images()
    good = check_flow({"flow": copy.deepcopy(flow)}, cfg, digits.spec, x, torch.device("cpu"))
    assert good["bits_per_dim"] <= MAX_BITS_PER_DIM["digits"] == good["max_bits_per_dim"]
    damaged = copy.deepcopy(flow)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    with pytest.raises(FlowRefused, match="refused, not cached"):
        check_flow({"flow": damaged}, cfg, digits.spec, x, torch.device("cpu"))


def test_calibration_is_stored_with_the_flow_and_loaded_with_it(digits, trained, flow_store):
    """key.json holds the gate's numbers and the calibration; the cached weights carry it to
    every later trial, and the training step's latent radius is eps_z_pixel / calibration."""
    cfg, flow, _, _ = trained
    (record,) = [json.loads(p.read_text()) for p in flow_store.rglob("key.json")]
    check = record["check"]
    assert check["images"] == "held_out" and check["n"] == len(digits.val)
    assert check["bits_per_dim"] <= check["max_bits_per_dim"] and check["round_trip"] < 1 / 255
    assert check["pixel_rms_per_latent"] == pytest.approx(float(flow.pixel_per_latent)) and check["pixel_rms_per_latent"] > 0
    nets = DEFENSE.build(cfg, digits.spec)
    assert components.ensure("ijsat", DEFENSE.pretrained(cfg, digits.spec), nets, cfg, digits.spec, flow_store,
                             batches(digits), torch.device("cpu")) == {"flow": "loaded"}
    assert torch.equal(nets["flow"].pixel_per_latent, flow.pixel_per_latent)
    assert nets["flow"].latent_radius(cfg.eps_z_pixel) == pytest.approx(cfg.eps_z_pixel / check["pixel_rms_per_latent"])


def test_train_step_attacks_at_the_calibrated_latent_radius(digits, trained, monkeypatch):
    ctx = make_ctx(digits, trained, mixup_prob=0.0)
    radii = []
    attack = ijsat.joint_attack
    monkeypatch.setattr(ijsat, "joint_attack", lambda *a, **k: radii.append(a[5]) or attack(*a, **k))
    x, y = digits.train.images(torch.arange(32)), digits.train.y[:32]
    DEFENSE.train_step(ctx, x, y)
    ctx.raw["flow"].pixel_per_latent.mul_(2)  # a flow twice as sensitive gets half the latent radius
    DEFENSE.train_step(ctx, x, y)
    assert radii[0] == pytest.approx(ctx.cfg.eps_z_pixel / float(trained[1].pixel_per_latent))
    assert radii[1] == pytest.approx(radii[0] / 2)


def displacement(flow: GlowFlow, x: torch.Tensor, radius: float) -> float:
    """Mean RMS pixel displacement of x under random corners of the latent box of ``radius``."""
    torch.manual_seed(7)
    with torch.no_grad():
        z = flow.encode(x)
        moved = flow.decode([t + radius * torch.randint(0, 2, t.shape).mul(2).sub(1) for t in z]) - flow.decode(z)
    return moved.flatten(1).pow(2).mean(1).sqrt().mean().item()


def test_a_calibrated_radius_moves_pixels_alike_at_64_and_3072_dimensions(digits, trained, cifar_flow):
    """The same radius in pixel units gives that RMS pixel displacement on both flows (at radii
    other than the one measured); in raw latent units it would not (their calibrations are far
    from 1)."""
    _, digit_flow, _, _ = trained
    cfg, spec, nets, x = cifar_flow
    check_flow(nets, cfg, spec, x, torch.device("cpu"))
    flows = {"digits": (digit_flow, digits.val.images()), "cifar": (nets["flow"], x)}
    for name, (flow, images) in flows.items():
        assert images[0].numel() in (64, 3072)
        assert abs(float(flow.pixel_per_latent) - 1) > 0.5
        for pixel in (1 / 255, 8 / 255):
            radius = flow.latent_radius(pixel)
            assert displacement(flow, images, radius) == pytest.approx(pixel, rel=0.1), (name, pixel)


def test_an_uncalibrated_flow_cannot_set_a_latent_radius():
    with pytest.raises(RuntimeError, match="not calibrated"):
        GlowFlow(1, 8, 2, 1, 8).latent_radius(0.01)
