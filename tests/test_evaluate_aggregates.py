"""Per-image aggregates (raysearch.evaluate.aggregates): worst cases per family, over seen and
unseen attacks, taken per image over per-call scores, and a randomized predictor's ensemble
values kept apart. Reports are built by hand: no model runs."""
from __future__ import annotations

import math

import pytest
import torch

from raysearch.evaluate import aggregates
from raysearch.evaluate.results import AttackResult, PredictorReport
from raysearch.schema import Threat


def _result(attack: str, family: str, threat: str, robust: list, ensemble: list[bool] | None = None,
            defense: bool = False) -> AttackResult:
    return AttackResult(attack, family, threat, "linf", 0.1, torch.tensor(robust), 1, 0.0,
                        ensemble=None if ensemble is None else torch.tensor(ensemble), defense=defense)


def test_aggregates_are_per_image_worst_cases():
    """Per family and over seen attacks: robust only where every attack failed; unseen: the
    union over the adversarial attacks; corruptions apart, their union and their mean; check
    attacks count in nothing."""
    clean = torch.tensor([True, True, True, True])
    rep = PredictorReport(4, clean, False, 1)
    rep.results = [_result("pgd_ce", "pgd", Threat.SEEN, [True, True, False, True]),
                   _result("pgd_cw", "pgd", Threat.SEEN, [True, False, True, True]),
                   _result("square", "square", Threat.SEEN, [True, True, True, False]),
                   _result("pgd_l2", "pgd_l2", Threat.UNSEEN, [False, True, True, True]),
                   _result("noise", "corruption", Threat.UNSEEN, [True, True, False, False]),
                   _result("pgd_unbounded", "eps_sweep", Threat.CHECK, [False, False, False, False])]
    aggregates.aggregate(rep)
    assert rep.accuracy("worst_pgd") == 0.5 and rep.aggregates["worst_pgd"][:2] == ("pgd", "seen")
    assert rep.accuracy("worst_seen") == 0.25
    assert rep.accuracy("union_unseen") == 0.75  # pgd_l2 alone: the corruption's two images are not in it
    assert rep.accuracy("union_corruptions") == 0.5 and rep.aggregates["union_corruptions"][:2] == (
        "corruption", "unseen")
    assert rep.accuracy("mean_corruption") == 0.5
    assert not {"worst_eps_sweep", "worst_corruption", "union_unseen_adversarial"} & set(rep.aggregates)
    assert rep.accuracy("pgd_cw") == 0.75 and math.isnan(rep.accuracy("nothing"))
    assert not rep.ensemble, "a deterministic predictor has no ensemble values"


def test_worst_cases_are_per_image_minima_of_call_fractions():
    """A randomized predictor's images score fractions of calls: the worst case over attacks is
    the per-image minimum of those fractions (clean included), then the mean; not the minimum
    of the attacks' means, and not a count of images that survive everything."""
    clean = torch.tensor([1.0, 0.8, 0.6, 0.0])
    rep = PredictorReport(4, clean, True, 20, scoring_calls=20)
    rep.results = [_result("pgd_ce", "pgd", Threat.SEEN, [0.5, 0.8, 0.6, 0.0]),
                   _result("apgd_ce", "apgd", Threat.SEEN, [0.9, 0.2, 0.6, 0.0]),
                   _result("pgd_l2", "pgd_l2", Threat.UNSEEN, [1.0, 0.8, 0.1, 0.0]),
                   _result("noise", "corruption", Threat.UNSEEN, [0.4, 0.8, 0.6, 0.0])]
    aggregates.aggregate(rep)
    per_image = aggregates.worst_per_image(rep.results[:2], rep.clean)
    assert per_image.tolist() == pytest.approx([0.5, 0.2, 0.6, 0.0])
    assert rep.accuracy("worst_seen") == pytest.approx(1.3 / 4)
    assert rep.accuracy("worst_seen") < min(rep.accuracy("pgd_ce"), rep.accuracy("apgd_ce"))
    assert rep.accuracy("union_unseen") == pytest.approx((1.0 + 0.8 + 0.1) / 4)
    assert rep.accuracy("union_corruptions") == pytest.approx((0.4 + 0.8 + 0.6) / 4)
    # the clean score bounds every image: an attacked score above it does not count
    assert aggregates.worst_per_image([_result("up", "up", Threat.SEEN, [1.0, 1.0, 1.0, 1.0])],
                                      rep.clean).tolist() == pytest.approx(clean.tolist())


def test_the_unseen_axis_is_the_same_for_every_method():
    """A defense's own attacks (ijsat's on-manifold attack) and the corruptions are reported
    apart: two methods that agree on the suite's unseen adversarial attacks get the same
    union_unseen however their extras and corruptions go."""
    suite = [_result("pgd_ce", "pgd", Threat.SEEN, [1.0, 1.0, 1.0, 0.0]),
             _result("pgd_l2", "pgd_l2", Threat.UNSEEN, [1.0, 1.0, 0.0, 0.0]),
             _result("stadv", "stadv", Threat.UNSEEN, [1.0, 0.0, 1.0, 0.0])]
    plain = PredictorReport(4, torch.ones(4), False, 1, results=list(suite))
    extra = PredictorReport(4, torch.ones(4), False, 1, results=suite + [
        _result("on_manifold", "on_manifold", Threat.UNSEEN, [0.0, 0.0, 0.0, 0.0], defense=True),
        _result("fog_s5", "corruption", Threat.UNSEEN, [0.0, 1.0, 0.0, 1.0])])
    aggregates.aggregate(plain)
    aggregates.aggregate(extra)
    assert plain.accuracy("union_unseen") == extra.accuracy("union_unseen") == 0.25
    assert extra.accuracy("worst_on_manifold") == 0.0 and extra.aggregates["worst_on_manifold"][1] == "unseen"
    assert extra.accuracy("union_corruptions") == 0.5 and "union_corruptions" not in plain.aggregates


def test_ensemble_values_are_kept_apart():
    """The vote's clean accuracy and its per-image worst case over the seen attacks (unseen ones
    do not enter it) are ensemble values, never aggregates."""
    rep = PredictorReport(4, torch.tensor([1.0, 0.6, 0.4, 0.0]), True, 20, scoring_calls=20,
                          clean_ensemble=torch.tensor([True, True, False, False]))
    rep.results = [_result("pgd_ce", "pgd", Threat.SEEN, [0.5, 0.5, 0.4, 0.0], [True, False, False, False]),
                   _result("square", "square", Threat.SEEN, [0.9, 0.6, 0.4, 0.0], [True, True, True, False]),
                   _result("pgd_l2", "pgd_l2", Threat.UNSEEN, [0.0, 0.0, 0.0, 0.0], [False, False, False, False])]
    aggregates.aggregate(rep)
    assert rep.ensemble == {"clean_ensemble": 0.5, "worst_seen_ensemble": 0.25}
    assert not {"clean_ensemble", "worst_seen_ensemble"} & set(rep.aggregates)
    assert rep.accuracy("worst_seen") == pytest.approx(1.4 / 4)


def test_curve_is_the_per_image_worst_case_per_radius():
    rep = PredictorReport(2, torch.tensor([1.0, 0.5]), True, 20, scoring_calls=20)
    rep.curve_results = {0.3: [_result("pgd_ce", "pgd", Threat.SEEN, [0.25, 0.5]),
                               _result("fgsm", "fgsm", Threat.SEEN, [0.5, 0.75])],
                         0.1: [_result("pgd_ce", "pgd", Threat.SEEN, [1.0, 1.0])]}
    aggregates.aggregate_curve(rep)
    assert list(rep.curve) == [0.1, 0.3]
    assert rep.curve == {0.1: pytest.approx(0.75), 0.3: pytest.approx(0.375)}
