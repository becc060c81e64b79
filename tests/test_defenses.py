"""Contract tests driven by the registry: a defense is tested the moment it is registered."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import search_spaces
from raysearch import data
from raysearch.config import default_config
from raysearch.local import local_context
from trainables import REGISTRY

METHODS = sorted(REGISTRY)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def make_ctx(method, digits, cache, **overrides):
    defense, ctx = local_context(method, digits, cache, batch_size=32, epochs=2, **overrides)
    return defense, ctx.cfg, ctx.raw, ctx


@pytest.fixture(scope="module")
def component_store(tmp_path_factory):
    return tmp_path_factory.mktemp("components")


@pytest.mark.parametrize("method", METHODS)
def test_train_step_updates_exactly_the_trained_nets(method, digits, component_store):
    defense, cfg, nets, ctx = make_ctx(method, digits, component_store)
    before = {r: copy.deepcopy(m.state_dict()) for r, m in nets.items()}
    x, y = digits.train.images(torch.arange(32)), digits.train.y[:32]
    terms = defense.train_step(ctx, x, y)
    assert terms and all(math.isfinite(v) for v in terms.values()), terms
    trained = set(defense.trainable(cfg))
    assert trained <= set(nets) and "classifier" in nets
    for role, m in nets.items():
        changed = any(not torch.equal(before[role][k], v) for k, v in m.state_dict().items()
                      if v.dtype.is_floating_point and "running" not in k)
        if role in trained:
            assert changed, f"{method}: one step did not change {role}"
        else:
            assert not changed, f"{method}: frozen {role} changed"


@pytest.mark.parametrize("method", METHODS)
def test_predictor_is_attackable(method, digits, component_store):
    defense, cfg, nets, _ = make_ctx(method, digits, component_store)
    for m in nets.values():
        m.eval()
    pred = defense.predictor(nets, cfg)
    x = digits.val.images(torch.arange(16)).requires_grad_(True)
    logits = pred.model(x)
    assert logits.shape == (16, digits.spec.classes)
    loss = torch.nn.functional.cross_entropy(logits, digits.val.y[:16])
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert pred.randomized == defense.randomized  # the class flag sizes the final evaluation
    if pred.randomized:
        with torch.no_grad():
            assert not torch.equal(pred.model(x), pred.model(x)), "randomized predictor gave identical draws"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", data.DATASETS)
def test_search_space_fits_config(method, dataset):
    spec = data.SPECS[dataset]
    space = search_spaces.to_optuna(search_spaces.load(method), spec.eps_scale)
    defaults = dataclasses.asdict(default_config(method, spec))
    assert space, f"{method} has an empty search space"
    for key, dist in space.items():
        assert key in defaults, f"{method}: search space key {key} is not a config field"
        assert search_spaces.contains(dist, defaults[key]), f"{method}: default {key}={defaults[key]} outside {dist}"


def test_every_searchable_method_searches_eps_except_standard():
    for method in METHODS:
        raw = search_spaces.load(method)
        if method != "standard":
            assert any(v.get("scale") == "eps" for v in raw.values()), f"{method} does not search a budget"
