"""Predictors as TorchScript modules (raysearch.export.scriptable): every defense's predictor is
exported and computes what the project's does; atop's randomness and atld's in-forward gradient
survive; a classifier TorchScript cannot compile is traced; a mismatch is refused."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from raysearch.config import default_config
from raysearch.export.scriptable import ExportError, export_predictor, verify
from trainables import REGISTRY
from trainables.atld import LatentDiscriminator
from trainables.base import Predictor

IMT = [{"imt": mode, "latent": latent} for mode in ("uniform", "banded") for latent in ("logits", "features")]
CASES = [(method, {}) for method in REGISTRY] + [("atld", change) for change in IMT]


def _predictor(method: str, spec, seed: int = 0, **changes) -> Predictor:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(default_config(method, spec), **changes)
    nets = REGISTRY[method].build(cfg, spec)
    for net in nets.values():
        net.eval()
    return REGISTRY[method].predictor(nets, cfg)


@pytest.mark.parametrize("method, changes", CASES, ids=lambda v: str(v) if v else "defaults")
def test_every_defense_exports_to_the_same_function(method, changes, digits):
    predictor = _predictor(method, digits.spec, **changes)
    exported = export_predictor(predictor, 1, 8)
    assert isinstance(exported.module, torch.jit.ScriptModule) and exported.how.startswith("script")
    assert verify(exported, predictor, 1, 8) == pytest.approx(0.0, abs=1e-6)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        got = exported.module(x)
        torch.manual_seed(1)
        want = predictor.model(x)
    torch.testing.assert_close(got, want)
    assert got.shape == (5, 10)


def test_atop_stays_random_and_draws_what_the_project_draws(digits):
    predictor = _predictor("atop", digits.spec, n_masks=2)
    exported = export_predictor(predictor, 1, 8)
    assert exported.forward_passes == 2 and "randomized" in exported.note
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert not torch.equal(exported.module(x), exported.module(x))
        torch.manual_seed(3)
        got = exported.module(x)
        torch.manual_seed(3)
        torch.testing.assert_close(got, predictor.model(x))


def test_a_wrong_image_size_is_refused_by_the_atop_module(digits):
    exported = export_predictor(_predictor("atop", digits.spec), 1, 8)
    with pytest.raises(torch.jit.Error, match="exported size"):
        exported.module(torch.rand(2, 1, 16, 16))


@pytest.mark.parametrize("latent", ["logits", "features"])
def test_atld_imt_differentiates_through_its_step_as_the_project_does(latent, digits):
    predictor = _predictor("atld", digits.spec, imt="banded", latent=latent)
    exported = export_predictor(predictor, 1, 8)
    assert exported.forward_passes == 2 and "gradient" in exported.note
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exported.module(x), predictor.model(x))
        assert not torch.is_grad_enabled()  # the step switched grad mode on and back off
    grads = []
    for model in (exported.module, predictor.model):
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(model(xi)[:, 0].sum(), xi)[0])
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


class _Unscriptable(nn.Module):
    """A user's classifier TorchScript cannot compile (a keyword-only argument with *args)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(64, 10)

    def features(self, x, *extra, scale=1.0):
        return torch.flatten(x, 1) * scale

    def forward(self, x, *extra):
        return self.head(self.features(x))


def test_a_classifier_torchscript_cannot_compile_is_traced(digits):
    predictor = Predictor(_Unscriptable().eval())
    exported = export_predictor(predictor, 1, 8)
    assert exported.how == "trace"
    verify(exported, predictor, 1, 8)  # another batch size than the trace's: no size fixed


def test_atld_imt_over_a_traced_classifier(digits):
    predictor = _predictor("atld", digits.spec, imt="uniform", latent="features")
    f = _Unscriptable().eval()
    model = predictor.model
    model.classifier = f
    model.discriminator = LatentDiscriminator(64, 10, hidden=16).eval()  # on the 64 flat features
    exported = export_predictor(predictor, 1, 8)
    assert "classifier: trace" in exported.how
    verify(exported, predictor, 1, 8)


def test_a_module_that_neither_compiles_nor_traces_is_refused_in_one_line():
    class Named(nn.Module):
        def forward(self, x, *extra):
            return "a name, not logits"

    with pytest.raises(ExportError, match="cannot export the predictor") as info:
        export_predictor(Predictor(Named()), 1, 8)
    assert len(str(info.value).splitlines()) == 1


def test_verify_refuses_a_module_that_differs_or_lost_its_randomness(digits):
    predictor = _predictor("standard", digits.spec)
    other = export_predictor(_predictor("standard", digits.spec, seed=1), 1, 8)
    with pytest.raises(ExportError, match="differ"):
        verify(other, predictor, 1, 8)
    # a predictor declared randomized whose export gives the same logits twice
    same = export_predictor(predictor, 1, 8)
    with pytest.raises(ExportError, match="lost the predictor's randomness"):
        verify(same, dataclasses.replace(predictor, randomized=True), 1, 8)
