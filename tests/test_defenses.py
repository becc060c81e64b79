"""The defense contract, driven by the registry: a defense is tested the moment it is registered.

A defense builds its networks and one optimizer per trained one; one ``train_step`` changes
every network it trains and no frozen one, and returns finite loss terms; every frozen network
is filled by a pre-trained component whose cache key holds no searched value; its search space
fits its Config; its predictor is attackable (input gradients; a PGD from raysearch.attacks stays
in the ε-ball and lowers its accuracy; a BPDA variant computes the same logits) and declares
whether it is randomized; its extra attacks return images; a checkpoint restores networks,
optimizers and predictor exactly. Pre-trained components are made cheap through ``CHEAP``
(their quality is the business of the per-method tests).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import optuna.distributions
import pytest
import torch

import search_spaces
from raysearch import attacks, data, trial_io
from raysearch.attacks import core
from raysearch.config import default_config
from raysearch.local import local_context
from trainables import REGISTRY
from trainables.base import Defense, StepContext

pytestmark = pytest.mark.filterwarnings("ignore:torch.lu is deprecated")  # inside normflows (ijsat's flow)
METHODS = sorted(REGISTRY)
# config fields that only set how long something costs, at values that make the contract cheap
# (set where a method's Config has the field), and the quality gate such a short fit needs
CHEAP = {"cls_epochs": 1, "pretrain_epochs": 1, "flow_epochs": 1, "sinkhorn_iters": 20, "eval_steps": 2,
         "flow_max_bits_per_dim": 8.0}
BATCH = 32  # examples per training step and per predictor check


def cheap_overrides(method: str) -> dict:
    fields = {f.name for f in dataclasses.fields(REGISTRY[method].Config)}
    return {name: value for name, value in CHEAP.items() if name in fields}


@dataclass
class Stepped:
    """A defense after one training step: the context, every network's state before the step,
    and the loss terms the step returned."""

    defense: Defense
    ctx: StepContext
    before: dict[str, dict[str, torch.Tensor]]
    terms: dict[str, float]


@pytest.fixture(scope="module", params=METHODS)
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def stepped(method, digits, component_store) -> Stepped:
    defense, ctx = local_context(method, digits, component_store, batch_size=BATCH, epochs=2,
                                 **cheap_overrides(method))
    before = {role: copy.deepcopy(net.state_dict()) for role, net in ctx.raw.items()}
    x, y = digits.train.images(torch.arange(BATCH)), digits.train.y[:BATCH]
    return Stepped(defense, ctx, before, defense.train_step(ctx, x, y))


def deployed(stepped: Stepped):
    """The predictor of the stepped defense, its networks in eval mode."""
    for net in stepped.ctx.raw.values():
        net.eval()
    return stepped.defense.predictor(stepped.ctx.raw, stepped.ctx.cfg)


def seeded(model, x: torch.Tensor, seed: int = 5) -> torch.Tensor:
    """``model(x)`` under a fixed global seed: a randomized predictor draws the same randomness."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x)


def same_state(a, b) -> bool:
    """Equal nested state dicts (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_state, a, b))
    return a == b


def another_value(dist: optuna.distributions.BaseDistribution, value):
    """A value of ``dist`` other than ``value``."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next(choice for choice in dist.choices if choice != value)
    return dist.high if value != dist.high else dist.low


class TestDefense:
    def test_builds_its_networks_and_one_optimizer_per_trained_network(self, method, stepped, digits):
        defense, ctx = stepped.defense, stepped.ctx
        assert defense.name == method
        nets = defense.build(ctx.cfg, digits.spec)
        trained = set(defense.trainable(ctx.cfg))
        assert "classifier" in nets and trained <= set(nets)
        assert set(ctx.opts) == trained and set(ctx.scheds) <= trained
        x = digits.val.images(torch.arange(4))
        with torch.no_grad():
            assert nets["classifier"].eval()(x).shape == (4, digits.spec.classes)

    def test_every_frozen_network_comes_pre_trained(self, stepped, digits):
        defense, cfg = stepped.defense, stepped.ctx.cfg
        filled = {role for comp in defense.pretrained(cfg, digits.spec) for role in comp.nets_filled}
        roles = set(defense.build(cfg, digits.spec))
        assert filled <= roles
        assert roles - set(defense.trainable(cfg)) <= filled, "a frozen network would stay random"

    def test_one_step_changes_every_trained_network_and_no_frozen_one(self, method, stepped):
        trained = set(stepped.defense.trainable(stepped.ctx.cfg))
        for role, net in stepped.ctx.raw.items():
            changed = any(not torch.equal(stepped.before[role][k], v) for k, v in net.state_dict().items()
                          if v.dtype.is_floating_point and "running" not in k)
            if role in trained:
                assert changed, f"{method}: one step did not change {role}"
            else:
                assert not changed, f"{method}: frozen {role} changed"

    def test_loss_terms_are_finite(self, stepped):
        terms = stepped.terms
        assert terms and all(math.isfinite(v) for v in terms.values()), terms

    @pytest.mark.parametrize("dataset", data.DATASETS)
    def test_search_space_fits_config(self, method, dataset):
        spec = data.SPECS[dataset]
        space = search_spaces.to_optuna(search_spaces.load(method), spec.eps_scale)
        defaults = dataclasses.asdict(default_config(method, spec))
        assert space, f"{method} has an empty search space"
        for key, dist in space.items():
            assert key in defaults, f"{method}: search space key {key} is not a config field"
            assert search_spaces.contains(dist, defaults[key]), \
                f"{method}: default {key}={defaults[key]} outside {dist}"

    def test_searches_a_budget_unless_standard_training(self, method):
        if method != "standard":
            raw = search_spaces.load(method)
            assert any(v.get("scale") == "eps" for v in raw.values()), f"{method} does not search a budget"

    def test_component_keys_hold_no_searched_value(self, method, digits):
        """Every trial of a search, whatever it samples and however long it trains, shares the
        cached components."""
        spec = digits.spec
        space = search_spaces.to_optuna(search_spaces.load(method), spec.eps_scale)
        cfg = default_config(method, spec)
        varied = dataclasses.replace(cfg, batch_size=cfg.batch_size // 2, epochs=cfg.epochs + 1,
                                     **{k: another_value(dist, getattr(cfg, k)) for k, dist in space.items()})
        defense = REGISTRY[method]
        for comp, varied_comp in zip(defense.pretrained(cfg, spec), defense.pretrained(varied, spec), strict=True):
            assert comp.key == varied_comp.key and not set(comp.key) & set(space)

    def test_predictor_is_attackable(self, stepped, digits):
        pred = deployed(stepped)
        x, y = digits.val.images(torch.arange(BATCH)), digits.val.y[:BATCH]
        xg = x.clone().requires_grad_(True)
        logits = pred.model(xg)
        assert logits.shape == (BATCH, digits.spec.classes)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), xg)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        # against the predictor's own labels (after one step, accuracy on the true ones means
        # little): PGD at ε_eval must change some of them, or the gradient does not reach the input
        torch.manual_seed(0)
        labels = core.predict(pred.model, x, pred.calls(8))
        eps = digits.spec.eps_eval
        x_adv = attacks.pgd(pred.model, x, labels, eps, steps=5, eot=pred.calls(4))
        assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        accuracy = {}
        for name, images in (("clean", x), ("pgd", x_adv)):
            torch.manual_seed(0)  # a randomized predictor scores both with the same draws
            accuracy[name] = (core.predict(pred.model, images, pred.calls(8)) == labels).float().mean().item()
        assert accuracy["pgd"] < accuracy["clean"], accuracy
        if pred.bpda is not None:  # the BPDA variant changes the backward pass only
            assert torch.allclose(seeded(pred.bpda, x), seeded(pred.model, x), atol=1e-5)

    def test_predictor_declares_whether_it_is_randomized(self, stepped, digits):
        pred = deployed(stepped)
        assert pred.randomized == stepped.defense.randomized  # the class flag sizes the final evaluation
        x = digits.val.images(torch.arange(BATCH))
        with torch.no_grad():
            repeated = torch.equal(pred.model(x), pred.model(x))
        assert repeated != pred.randomized, "randomized predictors draw afresh, the others repeat themselves"

    def test_extra_attacks_return_images_and_record_their_budget(self, stepped, digits):
        pred = deployed(stepped)
        x, y = digits.val.images(torch.arange(8)), digits.val.y[:8]
        for name, attack in stepped.defense.extra_attacks(stepped.ctx.raw, stepped.ctx.cfg).items():
            torch.manual_seed(0)
            x_adv = attack(pred.model, x, y, digits.spec.eps_eval)
            assert x_adv.shape == x.shape and not x_adv.requires_grad, name
            assert x_adv.min() >= 0 and x_adv.max() <= 1, name
            assert hasattr(attack, "eps") == hasattr(attack, "norm"), name

    def test_checkpoint_restores_networks_optimizers_and_predictor(self, method, stepped, digits, tmp_path):
        defense, ctx = stepped.defense, stepped.ctx
        trial_io.save(tmp_path, nets=ctx.nets, opts=ctx.opts, scheds=ctx.scheds, epoch=1, method=method,
                      dataset=digits.spec.name, cfg=ctx.cfg)
        _, cfg, nets, pred = trial_io.rebuild(tmp_path, digits.spec)
        assert cfg == ctx.cfg
        assert all(same_state(net.state_dict(), ctx.raw[role].state_dict()) for role, net in nets.items())
        trained = defense.trainable(cfg)
        opts, scheds = defense.optimizers({role: nets[role] for role in trained}, cfg, total_steps=100)
        assert trial_io.restore(trial_io.load_state(tmp_path), {}, opts, scheds) == 1
        for restored, saved in ((opts, ctx.opts), (scheds, ctx.scheds)):
            assert same_state({role: o.state_dict() for role, o in restored.items()},
                              {role: o.state_dict() for role, o in saved.items()})
        x = digits.val.images(torch.arange(8))
        assert torch.equal(seeded(pred.model, x), seeded(deployed(stepped).model, x))
