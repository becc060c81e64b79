"""Running the suite on one predictor (raysearch.evaluate.runner): EOT for randomized
predictors, the defense's own attacks, the aggregates."""
from __future__ import annotations

import math

import torch

from raysearch.evaluate import aggregates, checks, report, runner, suite
from raysearch.schema import Threat
from tests.evaluate_support import Noisy, cheap
from trainables.base import Predictor


def test_randomized_predictor_gets_eot(robust_model, test_images, digits):
    x, y = test_images
    calls = []
    noisy = Noisy(robust_model, 0.1)
    noisy.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    rep = runner.evaluate_predictor(Predictor(noisy, randomized=True), x, y, digits.spec,
                                    attacks=[cheap("pgd_ce", steps=3, restarts=1)], eot=20)
    assert rep.randomized and rep.eot == 20
    assert all(r.eot_samples == 20 for r in rep.results)
    # every PGD step saw 20 draws of each attacked image
    assert max(calls) >= 20 * int(rep.clean.sum())
    rows = report.report_rows(rep, {"experiment": "e", "trial_id": "x", "method": "m", "dataset": "digits"})
    assert {"clean", "clean_per_draw"} <= {r["attack"] for r in rows}
    assert checks.FLAG_RANDOM not in rep.flags


def test_eot_counts_draws_of_a_predictor_that_averages_several(robust_model, test_images, digits):
    """A call that already averages 4 draws is made ceil(20 / 4) = 5 times per gradient: 20
    draws, recorded as 20."""
    x, y = test_images
    calls = []
    noisy = Noisy(robust_model, 0.1)
    noisy.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    rep = runner.evaluate_predictor(Predictor(noisy, randomized=True, draws_per_call=4), x, y, digits.spec,
                                    attacks=[cheap("pgd_ce", steps=3, restarts=1)], eot=20)
    assert rep.eot == 20 and all(r.eot_samples == 20 for r in rep.results)
    assert max(calls) == 5 * len(x) and 5 * int(rep.clean.sum()) in calls  # clean scoring, attack steps


def test_defense_extra_attacks_are_unseen(robust_model, test_images, digits):
    x, y = test_images
    seen = []

    def shift(model, xb, yb, eps):
        seen.append(eps)
        return (xb + eps).clamp(0, 1)

    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"],
                                    extra={"brighten": shift})
    r = {r.attack: r for r in rep.results}["brighten"]
    assert r.threat == "unseen" and seen == [digits.spec.eps_eval]
    assert r.eps == digits.spec.eps_eval and r.norm == suite.DEFENSE
    assert rep.aggregates["union_unseen"][2] == r.accuracy
    # an attack with its own budget (ijsat's latent radius) is recorded with it
    shift.eps, shift.norm = 0.5, "latent_linf"
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"],
                                    extra={"brighten": shift})
    r = {r.attack: r for r in rep.results}["brighten"]
    assert (r.eps, r.norm) == (0.5, "latent_linf")


def _result(attack: str, family: str, threat: str, robust: list[bool]) -> runner.AttackResult:
    return runner.AttackResult(attack, family, threat, "linf", 0.1, torch.tensor(robust), 1, 0.0)


def test_aggregates_are_per_image_worst_cases():
    """Per family and over seen attacks: robust only where every attack failed; unseen: the
    union; corruptions: also their mean; check attacks count in nothing."""
    clean = torch.tensor([True, True, True, True])
    rep = runner.PredictorReport(4, clean, 1.0, False, 1)
    rep.results = [_result("pgd_ce", "pgd", Threat.SEEN, [True, True, False, True]),
                   _result("pgd_cw", "pgd", Threat.SEEN, [True, False, True, True]),
                   _result("square", "square", Threat.SEEN, [True, True, True, False]),
                   _result("pgd_l2", "pgd_l2", Threat.UNSEEN, [False, True, True, True]),
                   _result("noise", "corruption", Threat.UNSEEN, [True, True, False, False]),
                   _result("pgd_unbounded", "eps_sweep", Threat.CHECK, [False, False, False, False])]
    aggregates.aggregate(rep)
    assert rep.accuracy("worst_pgd") == 0.5 and rep.aggregates["worst_pgd"][:2] == ("pgd", "seen")
    assert rep.accuracy("worst_seen") == 0.25
    assert rep.accuracy("union_unseen") == 0.25
    assert rep.accuracy("union_unseen_adversarial") == 0.75
    assert rep.accuracy("mean_corruption") == 0.5
    assert "worst_eps_sweep" not in rep.aggregates
    assert rep.accuracy("pgd_cw") == 0.75 and math.isnan(rep.accuracy("nothing"))


def test_robustness_curve_runs_the_seen_attacks_per_radius_and_changes_nothing_at_eps_eval(
        robust_model, test_images, digits):
    """With ``eps_list`` the seen attacks run again at each radius (ε_eval = 0.2 not twice);
    every result at ε_eval, the aggregates and the flags are those of a run without it; on the
    adversarially trained model the worst case falls with the radius."""
    x, y = test_images
    suite_ = ["fgsm", cheap("pgd_ce", steps=20, restarts=1), cheap("pgd_l2", steps=10, restarts=1),
              cheap("pgd_eps_x2", steps=10)]
    plain = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite_)
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite_,
                                    eps_list=(0.3, 0.05, 0.2, 0.1))
    assert [r.attack for r in rep.results] == [r.attack for r in plain.results]
    assert all(torch.equal(a.robust, b.robust) and a.eps == b.eps for a, b in zip(rep.results, plain.results))
    assert rep.aggregates == plain.aggregates and rep.flags == plain.flags and not plain.curve
    assert list(rep.curve_results) == [0.05, 0.1, 0.3] and list(rep.curve) == [0.05, 0.1, 0.3]
    for radius, results in rep.curve_results.items():
        assert [(r.attack, r.threat, r.eps) for r in results] == [("fgsm", Threat.SEEN, radius),
                                                                  ("pgd_ce", Threat.SEEN, radius)]
        assert rep.curve[radius] == float(aggregates.robust_to_all(results, rep.clean).float().mean())
        assert rep.accuracy(f"worst_seen@{radius:g}") == rep.curve[radius]
    curve = rep.robustness_curve()
    assert list(curve) == [0.05, 0.1, 0.2, 0.3] and curve[0.2] == plain.accuracy("worst_seen")
    accs = list(curve.values())
    assert all(b <= a for a, b in zip(accs, accs[1:])), curve
    assert accs[0] <= rep.clean_acc and accs[-1] < accs[0]
