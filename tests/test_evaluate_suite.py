"""The suite plan (raysearch.evaluate.suite): names and groups to attacks, and the runs each
attack gets against a predictor (transfer, skipped for randomized predictors, BPDA variants)."""
from __future__ import annotations

import math

import pytest
from torch import nn

from raysearch import attacks
from raysearch.evaluate import runner, suite
from raysearch.schema import Threat
from tests.evaluate_support import Noisy, cheap
from trainables.base import Predictor


def test_expand_attacks_names_groups_and_specs():
    default, with_defense = suite.expand_attacks(None)
    assert [a.name for a in default] == list(attacks.DEFAULT_SUITE) and with_defense
    seen, with_defense = suite.expand_attacks(["seen"])
    assert seen and all(a.threat == Threat.SEEN for a in seen) and not with_defense
    assert {a.name for a in seen} == {n for n in attacks.DEFAULT_SUITE if attacks.ATTACKS[n].threat == "seen"}
    picked, with_defense = suite.expand_attacks(["fgsm", suite.DEFENSE, cheap("pgd_ce", steps=2), "fgsm"])
    assert [a.name for a in picked] == ["fgsm", "pgd_ce"] and picked[1].params["steps"] == 2 and with_defense
    _, with_defense = suite.expand_attacks(["default"])
    assert with_defense
    with pytest.raises(suite.EvalError, match="unknown attack 'pgd_bogus'"):
        suite.expand_attacks(["pgd_bogus"])


def test_variants_per_predictor():
    model, bpda, surrogate = nn.Identity(), nn.Identity(), nn.Identity()
    plain = Predictor(model)
    assert suite.variants(attacks.ATTACKS["pgd_ce"], plain, None, 1) == [("", model, 1)]
    # transfer: from the surrogate, never from the predictor itself
    transfer = attacks.ATTACKS["transfer_pgd"]
    assert suite.variants(transfer, plain, None, 1) == []
    assert suite.variants(transfer, plain, model, 1) == []
    assert suite.variants(transfer, plain, surrogate, 1) == [("", surrogate, 1)]
    # BPDA on every white-box attack of a deterministic predictor, not on gradient-free ones
    masked = Predictor(model, bpda=bpda)
    assert suite.variants(attacks.ATTACKS["pgd_l2"], masked, None, 1) == [("", model, 1), ("+bpda", bpda, 1)]
    assert suite.variants(attacks.ATTACKS["square"], masked, None, 1) == [("", model, 1)]
    # randomized: AutoAttack's rand protocol (no APGD-T), BPDA on the seen attacks only
    rand = Predictor(model, randomized=True, bpda=bpda)
    assert suite.variants(attacks.ATTACKS["apgd_t"], rand, None, 20) == []
    assert suite.variants(attacks.ATTACKS["pgd_ce"], rand, None, 20) == [("", model, 20), ("+bpda", bpda, 20)]
    assert suite.variants(attacks.ATTACKS["pgd_l2"], rand, None, 20) == [("", model, 20)]
    assert suite.defense_variants(rand) == [("", model), ("+bpda", bpda)]
    assert suite.defense_variants(plain) == [("", model)]


def test_attack_runs_carry_budget_and_protocol(digits):
    model = nn.Identity()
    rand = Predictor(model, randomized=True, bpda=nn.Identity())
    names = ["pgd_ce", "pgd_l2", "apgd_t", "transfer_pgd", "gaussian_noise_s3"]
    runs = list(suite.attack_runs([attacks.ATTACKS[n] for n in names], rand, digits.spec, 0.25, nn.Identity(), 20))
    assert [r.name for r in runs] == ["pgd_ce", "pgd_ce+bpda", "pgd_l2", "transfer_pgd", "gaussian_noise_s3"]
    by_name = {r.name: r for r in runs}
    assert by_name["pgd_ce"].eps == 0.25 and by_name["pgd_l2"].eps == digits.spec.eps_eval_l2
    assert math.isnan(by_name["gaussian_noise_s3"].eps)
    assert by_name["pgd_ce"].randomized and not by_name["transfer_pgd"].randomized
    assert by_name["transfer_pgd"].calls == 1 and by_name["pgd_ce+bpda"].calls == 20


def test_randomized_predictor_gets_autoattacks_rand_protocol(robust_model, test_images, digits):
    """Against a randomized predictor: APGD-T is not run, PGD runs one restart of EOT gradients,
    and Square spends its whole budget on every image, incumbent and proposal on the same draws."""
    x, y = test_images
    noisy = Noisy(robust_model, 0.1)
    rep = runner.evaluate_predictor(Predictor(noisy, randomized=True), x, y, digits.spec, eot=20,
                                    attacks=[cheap("apgd_t", n_iter=2), cheap("pgd_ce", steps=2),
                                             cheap("square", n_queries=25)])
    assert [r.attack for r in rep.results] == ["pgd_ce", "square"]
    sizes = []
    noisy.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    xs, ys = x[:10], y[:10]
    attacks.run(cheap("square", n_queries=25), noisy, xs, ys, 0.2, eot=20, randomized=True)
    # the start measured twice (its draws must replay), then 25 queries of every image, each the
    # incumbent and the proposal on the same draws
    assert sizes == [10] * (2 + 2 * 25), sizes
    sizes.clear()
    attacks.run(cheap("pgd_ce", steps=3), noisy, xs, ys, 0.2, eot=20, randomized=True)
    assert len(sizes) <= 5 and max(sizes) == 200  # one restart: 3 steps (+ final check) of 20 draws


def test_check_radii_sorts_dedupes_and_refuses_radii_outside_the_pixel_scale():
    assert suite.check_radii(None) == () and suite.check_radii([]) == ()
    assert suite.check_radii([0.3, 0.1, 0.3, 1, "0.05"]) == (0.05, 0.1, 0.3, 1.0)
    assert suite.check_radii([8 / 255, 0.0313725]) == (8 / 255,)  # alike under %g: one radius, the first
    for bad in (0, -0.1, 1.5, math.nan, math.inf):
        with pytest.raises(suite.EvalError, match=r"--eps-list: every radius must be in \(0, 1\]"):
            suite.check_radii([0.1, bad])
    with pytest.raises(suite.EvalError, match="not a number"):
        suite.check_radii(["wide"])


def test_curve_plan_takes_the_seen_attacks_at_eps_eval_and_drops_eps_eval():
    """The curve reruns the suite's seen attacks with an ε_eval budget (not the unseen ones, not
    the ε-sweep checks) at each radius other than ε_eval."""
    suite_ = [attacks.ATTACKS[n] for n in ("fgsm", "pgd_ce", "transfer_pgd", "pgd_l2", "jpeg", "pgd_eps_x2",
                                          "pgd_unbounded")]
    seen, radii = suite.curve_plan(suite_, [0.3, 0.2, 0.1], 0.2)
    assert [a.name for a in seen] == ["fgsm", "pgd_ce", "transfer_pgd"] and radii == (0.1, 0.3)
    assert suite.curve_plan(suite_, [0.2], 0.2) == ([], ())
    assert suite.curve_plan(suite_, [8 / 255], 0.0313725) == ([], ())
    assert suite.curve_plan([attacks.ATTACKS["pgd_l2"]], [0.1], 0.2) == ([], ())
    assert suite.curve_plan(suite_, (), 0.2) == ([], ())


@pytest.mark.parametrize("classes, left_out", [(2, {"apgd_dlr", "apgd_t"}), (3, {"apgd_t"}), (4, set())])
def test_attacks_whose_loss_needs_more_classes_are_left_out(digits, classes, left_out):
    """DLR divides by the gap between the top logit and the third (the targeted form also needs a
    fourth), so on a data set of fewer classes those attacks are not run rather than failing."""
    import dataclasses

    spec = dataclasses.replace(digits.spec, classes=classes)
    seen = [n for n in attacks.DEFAULT_SUITE if attacks.ATTACKS[n].threat == Threat.SEEN]
    runs = {r.attack.name for r in suite.attack_runs([attacks.ATTACKS[n] for n in seen], Predictor(nn.Identity()),
                                                     spec, 0.2, None, 1)}
    assert runs == set(seen) - left_out - {"transfer_pgd"}


@pytest.mark.parametrize("classes, targets", [(4, 3), (6, 5), (10, 9), (100, 9)])
def test_a_targeted_runs_restarts_count_the_targets_it_can_have(digits, classes, targets):
    """APGD-T attacks at most the classes − 1 wrong classes there are: its row's restarts say
    that many targets, not the registered nine, on a data set of fewer than ten classes."""
    import dataclasses

    spec = dataclasses.replace(digits.spec, classes=classes)
    run, = suite.attack_runs([attacks.ATTACKS["apgd_t"]], Predictor(nn.Identity()), spec, 0.2, None, 1)
    assert run.settings == (100, targets, 0)
