"""The checks on the final evaluation's numbers (raysearch.evaluate.checks): budgets,
undeclared randomness, and the gradient-masking checks, per image and on aggregates, on models
built to trip them and on reports whose counts are known in advance."""
from __future__ import annotations

import math

import pytest
import torch

from raysearch import attacks
from raysearch.evaluate import checks, runner
from raysearch.evaluate.results import AttackResult, PredictorReport
from raysearch.schema import Threat
from raysearch.stats import count_limit, wilson
from tests.evaluate_support import PGD, SQUARE, SWEEP, Noisy, Quantize, Scaled, Threshold, cheap, threshold_images
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


def test_the_proxy_check_allows_both_intervals():
    """The proxy (500 validation images) may sit above the final worst case (1000 test images)
    by the upper half of the one's interval plus the lower half of the other's, no more."""
    allowed = (wilson(500, 1000)[1] - 0.5) + (0.61 - wilson(305, 500)[0])
    over = checks.proxy_check(0.61, 500, 0.5, 1000)
    assert (over.count, over.n) == (110, 1000) and over.limit == pytest.approx(1000 * allowed) and over.fired
    assert not checks.proxy_check(0.55, 500, 0.5, 1000).fired
    # a proxy without its n is taken as exact: only the final interval is allowed
    assert checks.proxy_check(0.55, None, 0.5, 1000).fired
    assert checks.proxy_check(None, 500, 0.5, 1000) is None and checks.proxy_check(math.nan, 500, 0.5, 1000) is None


def _result(attack: str, robust, family: str | None = None, threat: str = Threat.SEEN, gradient: bool = True,
            eps: float = 0.1) -> AttackResult:
    return AttackResult(attack, family or attack, threat, "linf", eps, torch.as_tensor(robust, dtype=torch.float32),
                        1, 0.0, gradient=gradient)


def _robust_except(n: int, fooled: int) -> torch.Tensor:
    """Per image 1.0, except 0.0 on the first ``fooled``."""
    out = torch.ones(n)
    out[:fooled] = 0.0
    return out


def test_square_only_images_on_a_gradient_masked_toy_are_counted_exactly(digits):
    """A hard step (zero gradient everywhere): PGD stays at its random start and fools nothing,
    Square fools the 10 images one ε-step from the step. The check counts exactly those 10 and
    fires (noise at a 1% base rate on 200 images allows 4.8); the zero-gradient check counts
    every image. The same decision made smooth: PGD fools the same 10 images, nothing counted."""
    x, y = threshold_images(200, 10, 0.1)
    suite = [cheap("pgd_ce", steps=10, restarts=1), cheap("square", n_queries=50)]
    rep = runner.evaluate_predictor(Predictor(Threshold(0.9, masked=True)), x, y, digits.spec, eps_eval=0.1,
                                    attacks=suite)
    assert rep.accuracy("pgd_ce") == 1.0 and rep.accuracy("square") == pytest.approx(0.95)
    free = rep.checks[checks.FLAG_GRADIENT_FREE]
    assert (free.count, free.n, free.fired) == (10, 200, True)
    assert free.limit == pytest.approx(count_limit(200, checks.BASE_RATE)) == pytest.approx(4.758, abs=1e-3)
    assert rep.checks[checks.FLAG_ZERO_GRADIENT].count == 200
    assert {checks.FLAG_GRADIENT_FREE, checks.FLAG_ZERO_GRADIENT} <= set(rep.flags)
    assert free.as_dict() == {"count": 10, "n": 200, "limit": round(free.limit, 3), "fired": True, "what": free.what}

    sound = runner.evaluate_predictor(Predictor(Threshold(0.9, masked=False)), x, y, digits.spec, eps_eval=0.1,
                                      attacks=suite)
    assert sound.accuracy("pgd_ce") == sound.accuracy("square") == pytest.approx(0.95)
    assert sound.checks[checks.FLAG_GRADIENT_FREE].count == 0
    assert sound.checks[checks.FLAG_ZERO_GRADIENT].count == 0
    assert not {checks.FLAG_GRADIENT_FREE, checks.FLAG_ZERO_GRADIENT} & set(sound.flags)


def test_a_handful_of_differing_images_on_a_large_set_is_noise():
    """2000 images, white-box attacks fool 500: Square fooling 5 more is within the noise of a
    1% base rate (limit 28.7), 40 more is not. Images Square fools along with a white-box
    attack never count."""
    n = 2000
    for extra, fires in ((5, False), (40, True)):
        rep = PredictorReport(n, torch.ones(n), False, 1)
        rep.results = [_result("pgd_ce", _robust_except(n, 500)),
                       _result("square", _robust_except(n, 500 + extra), gradient=False)]
        check = checks.per_image_checks(rep)[checks.FLAG_GRADIENT_FREE]
        assert (check.count, check.fired) == (extra, fires)
        assert check.limit == pytest.approx(n * 0.01 + 1.96 * math.sqrt(n * 0.01 * 0.99))


def test_per_call_fractions_count_only_beyond_call_noise():
    """A randomized predictor, 20 scoring calls per image: the white-box attacks leave each image
    0.7 of its calls. Square at 0.6 is call noise (the Wilson intervals of 12/20 and 14/20
    overlap) and counts nothing; at 0.05 on 30 images it counts those 30, and fires."""
    n, calls = 1000, 20
    square = torch.full((n,), 0.6)
    square[:30] = 0.05
    rep = PredictorReport(n, torch.ones(n), True, 20, scoring_calls=calls)
    rep.results = [_result("pgd_ce", torch.full((n,), 0.7)), _result("apgd_ce", torch.full((n,), 0.75)),
                   _result("square", square, gradient=False)]
    check = checks.per_image_checks(rep)[checks.FLAG_GRADIENT_FREE]
    assert (check.count, check.fired) == (30, True)
    assert checks.clearly_below(torch.tensor([0.6, 0.05, 0.0]), torch.tensor([0.7, 0.7, 1.0]), calls).tolist() == [
        False, True, True]
    # one call (a deterministic predictor) has no call noise: any drop counts
    assert checks.clearly_below(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), 1).tolist() == [True, False]


def test_transfer_bpda_and_unbounded_counts():
    """Transfer and BPDA attacks count the images they fool that the white-box attacks (for BPDA:
    the same attacks through the real backward pass) do not; PGD at ε = 1 counts the images it
    leaves correct, against a 2% base rate."""
    n = 100
    rep = PredictorReport(n, torch.ones(n), False, 1)
    rep.results = [_result("pgd_ce", _robust_except(n, 20)),
                   _result("pgd_ce+bpda", _robust_except(n, 30), family="pgd"),
                   _result("transfer_pgd", _robust_except(n, 21), family="transfer"),
                   _result("pgd_unbounded", _robust_except(n, 90), family="eps_sweep", threat=Threat.CHECK, eps=1.0)]
    rep.results[2].surrogate = True
    found = checks.per_image_checks(rep)
    assert found[checks.FLAG_BPDA].count == 10 and found[checks.FLAG_BPDA].fired
    # the white-box set holds the BPDA variant too: transfer finds nothing beyond it
    assert found[checks.FLAG_TRANSFER].count == 0 and not found[checks.FLAG_TRANSFER].fired
    assert found[checks.FLAG_UNBOUNDED].count == 10 and found[checks.FLAG_UNBOUNDED].fired
    assert found[checks.FLAG_UNBOUNDED].limit == pytest.approx(count_limit(n, checks.UNBOUNDED_BASE_RATE))
    rep.results[3] = _result("pgd_unbounded", _robust_except(n, 99), family="eps_sweep", threat=Threat.CHECK, eps=1.0)
    assert not checks.per_image_checks(rep)[checks.FLAG_UNBOUNDED].fired  # one image left: noise


def test_zero_gradient_and_saturated_softmax_on_constructed_models():
    """Per image: a hard step and a network that ignores its input have no input gradient; a
    linear model with huge weights is saturated; the same model with small weights is neither."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 2

    class Ignores(torch.nn.Module):  # logits from a parameter alone: no gradient reaches the input
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return self.bias.expand(len(x), -1)

    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    huge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        huge[1].weight.copy_(linear[1].weight * 1e4)
        huge[1].bias.copy_(linear[1].bias * 1e4)
    none, saturated = checks.gradient_signs(Threshold(0.9, masked=True), x, y, calls=1)
    assert none.all() and not saturated.any()
    none, _ = checks.gradient_signs(Ignores(), x, y, calls=3)
    assert none.all()
    none, saturated = checks.gradient_signs(linear, x, y, calls=1)
    assert not none.any() and not saturated.any()
    _, saturated = checks.gradient_signs(huge, x, y, calls=1)
    assert saturated.all()


def test_saturated_images_count_where_the_attacks_left_them_correct():
    """Saturated images that the white-box attacks fooled anyway hide nothing: 60 saturated
    images of which the attacks fooled 50 count 10."""
    n = 100
    rep = PredictorReport(n, torch.ones(n), False, 1, saturated=torch.arange(n) < 60,
                          no_gradient=torch.zeros(n, dtype=torch.bool))
    rep.results = [_result("pgd_ce", _robust_except(n, 50))]
    found = checks.per_image_checks(rep)
    assert found[checks.FLAG_SATURATED].count == 10 and found[checks.FLAG_SATURATED].fired
    assert found[checks.FLAG_ZERO_GRADIENT].count == 0 and not found[checks.FLAG_ZERO_GRADIENT].fired


def test_aggregate_flags_use_the_wilson_interval():
    """FGSM below PGD fires only beyond the upper end of FGSM's 95% interval (n = 1000,
    accuracy 0.45: 0.481), not at a fixed tolerance."""
    n = 1000
    high = wilson(450, n)[1]
    for pgd_acc, fires in ((0.50, True), (0.47, False)):
        rep = PredictorReport(n, torch.ones(n), False, 1)
        rep.results = [_result("pgd_ce", _robust_except(n, round(n * (1 - pgd_acc))), family="pgd"),
                       _result("fgsm", _robust_except(n, 550), family="fgsm")]
        check = checks.aggregate_checks(rep)[checks.FLAG_FGSM]
        assert check.limit == pytest.approx(n * (high - 0.45)) and check.fired == fires


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
    # a sound model raises none of these, once APGD is among the white-box attacks (PGD-20 alone
    # leaves 4 of these 40 images to Square: a weak white-box suite, which the check is there to see)
    apgd = cheap("apgd_ce", n_iter=50)
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=[PGD, apgd, *suite[1:], "fgsm"])
    assert rep.results[0].attack == "pgd_ce" and len(rep.results) == 7
    assert not set(rep.flags) & {checks.FLAG_GRADIENT_FREE, checks.FLAG_UNBOUNDED, checks.FLAG_EPS,
                                 checks.FLAG_FGSM, checks.FLAG_ZERO_GRADIENT, checks.FLAG_SATURATED}
    assert rep.checks[checks.FLAG_GRADIENT_FREE].count <= 1


def test_saturated_cross_entropy_is_flagged(robust_model, test_images, digits):
    x, y = test_images
    suite = [PGD, cheap("pgd_cw", steps=20, restarts=1)]
    rep = runner.evaluate_predictor(Predictor(Scaled(robust_model)), x, y, digits.spec, attacks=suite)
    assert checks.FLAG_CE in rep.flags
    # the images the margin attack could not fool sit on a saturated softmax
    assert checks.FLAG_SATURATED in rep.flags and checks.FLAG_ZERO_GRADIENT in rep.flags
    assert rep.checks[checks.FLAG_SATURATED].count == round(rep.accuracy("worst_seen") * len(y))
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite)
    assert not {checks.FLAG_CE, checks.FLAG_SATURATED, checks.FLAG_ZERO_GRADIENT} & set(rep.flags)


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
