"""The checks on the final evaluation's numbers (raysearch.evaluate.checks): budgets,
undeclared randomness, and the gradient-masking flags on models built to trip them."""
from __future__ import annotations

import math

import pytest
import torch

from raysearch import attacks
from raysearch.evaluate import checks, runner
from tests.evaluate_support import PGD, SQUARE, SWEEP, Noisy, Quantize, Scaled, cheap
from trainables.base import Predictor


def test_budget_and_range_are_enforced():
    x = torch.full((2, 1, 4, 4), 0.5)
    pgd, l2 = attacks.ATTACKS["pgd_ce"], attacks.ATTACKS["pgd_l2"]
    checks.check_budget(pgd, x, x + 0.1, 0.1)
    with pytest.raises(RuntimeError, match="exceeds"):
        checks.check_budget(pgd, x, x + 0.2, 0.1)
    with pytest.raises(RuntimeError, match="L2 perturbation"):
        checks.check_budget(l2, x, x + 0.1, 0.1)  # L2 norm 0.4
    with pytest.raises(RuntimeError, match=r"outside \[0, 1\]"):
        checks.check_range("jpeg", x, x + 0.6)
    with pytest.raises(RuntimeError, match="returned shape"):
        checks.check_range("jpeg", x, x[:1])
    checks.check_budget(pgd, x[:0], x[:0], 0.1)  # nothing attacked: nothing to check


def test_proxy_overstates():
    assert checks.proxy_overstates(0.61, 0.5) and not checks.proxy_overstates(0.59, 0.5)
    assert not checks.proxy_overstates(None, 0.5) and not checks.proxy_overstates(math.nan, 0.5)


def test_undeclared_randomness_is_flagged(robust_model, test_images, digits):
    x, y = test_images
    rep = runner.evaluate_predictor(Predictor(Noisy(robust_model, 0.1), randomized=False), x, y, digits.spec,
                                    attacks=["fgsm"])
    assert checks.FLAG_RANDOM in rep.flags
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"])
    assert checks.FLAG_RANDOM not in rep.flags


def test_bpda_variant_and_masking_flags(robust_model, test_images, digits):
    """Quantization masks the gradient: the real backward finds nothing, BPDA and Square do.
    The family number is the worst case over both variants, and the checks fire."""
    x, y = test_images
    masked = Predictor(Quantize(robust_model), bpda=Quantize(robust_model, straight_through=True))
    x, y = x[:40], y[:40]
    suite = [PGD, SQUARE, *SWEEP]
    rep = runner.evaluate_predictor(masked, x, y, digits.spec, attacks=suite)
    acc = {r.attack: r.accuracy for r in rep.results}
    assert acc["pgd_ce+bpda"] < acc["pgd_ce"]
    assert rep.aggregates["worst_pgd"][2] <= min(acc["pgd_ce"], acc["pgd_ce+bpda"])
    assert rep.aggregates["worst_seen"][2] <= min(acc["pgd_ce+bpda"], acc["square"])
    assert checks.FLAG_BPDA in rep.flags
    # without BPDA, only the gradient-free attack sees through the masking
    rep = runner.evaluate_predictor(Predictor(Quantize(robust_model)), x, y, digits.spec, attacks=suite)
    assert checks.FLAG_GRADIENT_FREE in rep.flags
    assert checks.FLAG_UNBOUNDED in rep.flags
    # a sound model raises none of these
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite + ["fgsm"])
    assert rep.results[0].attack == "pgd_ce" and len(rep.results) == 6
    assert not set(rep.flags) & {checks.FLAG_GRADIENT_FREE, checks.FLAG_UNBOUNDED, checks.FLAG_EPS,
                                 checks.FLAG_FGSM}


def test_saturated_cross_entropy_is_flagged(robust_model, test_images, digits):
    x, y = test_images
    suite = [PGD, cheap("pgd_cw", steps=20, restarts=1)]
    rep = runner.evaluate_predictor(Predictor(Scaled(robust_model)), x, y, digits.spec, attacks=suite)
    assert checks.FLAG_CE in rep.flags
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite)
    assert checks.FLAG_CE not in rep.flags


def test_transfer_from_bare_classifier(trained, test_images, digits):
    """A purifier-like wrapper whose gradient is masked: transfer from the bare classifier
    beats the white-box attack on the wrapper, and is flagged."""
    x, y = test_images
    f = trained["standard"][1]["classifier"]
    rep = runner.evaluate_predictor(Predictor(Quantize(f, levels=8)), x, y, digits.spec,
                                    attacks=[PGD, cheap("transfer_pgd", steps=20, restarts=1)], surrogate=f)
    assert "transfer_pgd" in {r.attack for r in rep.results}
    assert checks.FLAG_TRANSFER in rep.flags
    rep = runner.evaluate_predictor(Predictor(f), x, y, digits.spec, attacks=["transfer_pgd"], surrogate=f)
    assert not rep.results, "no transfer attack when the surrogate is the predictor itself"
