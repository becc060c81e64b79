"""dashboard.curves: the robustness curve's radii, the final rows at a radius and the front
drawn there, and the accuracy-vs-ε table of selected trials, on results folders written
through raysearch.store with the curve's '<attack>@<radius>' rows (``curve`` of
dashboard_support)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from dashboard import curves, details, fronts, load, views
from dashboard_support import curve_accuracy, write_results

RADII = (0.1, 0.3)  # beside ε_eval = 0.2


@pytest.fixture
def res(tmp_path):
    return load.load_results(write_results(tmp_path / "results", curve=RADII))


@pytest.fixture
def plain(tmp_path):
    return load.load_results(write_results(tmp_path / "plain"))


def _final(res):
    return res.evals[res.evals["stage"] == "final"]


def test_radii_and_the_eps_eval_views_ignore_the_curve_rows(res, plain):
    assert curves.radii(res.evals) == list(RADII) and curves.radii(plain.evals) == []
    assert _final(res)["attack"].str.contains("@").any()
    pd.testing.assert_frame_equal(views.final_rows(res.evals).reset_index(drop=True),
                                  views.final_rows(plain.evals).reset_index(drop=True))
    assert [v.key for v in views.views(res.evals)] == [v.key for v in views.views(plain.evals)]
    for view in [v.key for v in views.views(plain.evals)]:
        pd.testing.assert_frame_equal(views.objectives(res.trials, res.evals, view),
                                      views.objectives(plain.trials, plain.evals, view))
    keys = list(views.final_rows(res.evals)[load.KEY].drop_duplicates().itertuples(index=False, name=None))
    pd.testing.assert_frame_equal(details.attack_accuracies(res.evals, keys), details.attack_accuracies(plain.evals, keys))


def test_radius_applies_to_seen_views_only(res):
    assert curves.applies(views.WORST_SEEN, res.evals)
    assert curves.applies("attack:pgd_ce", res.evals) and curves.applies("family:apgd", res.evals)
    for key in (views.PROXY, views.UNION_UNSEEN, "attack:stadv", "family:corruption", "attack:mean_corruption"):
        assert not curves.applies(key, res.evals), key
    assert curves.label_at("Worst case over seen attacks (final)", 0.1) == \
        "Worst case over seen attacks at ε = 0.1 (final)"


def test_front_at_a_radius(res):
    """At 0.1 every evaluated trial's robust accuracy is its worst_seen@0.1 row and its clean
    accuracy the final clean one; at ε_eval (0.2) the front is the default one; at a radius no
    trial was evaluated at, nothing."""
    fin = _final(res)
    for radius in RADII:
        table = curves.objectives_at(res.trials, res.evals, views.WORST_SEEN, radius).dropna(subset=["robust"])
        assert set(table["trial_id"]) == set(views.final_rows(res.evals)["trial_id"])
        for rec in table.itertuples():
            rows = fin[(fin["experiment"] == rec.experiment) & (fin["trial_id"] == rec.trial_id)]
            assert rec.robust == rows.loc[rows["attack"] == f"worst_seen@{radius:g}", "accuracy"].item()
            assert rec.clean == rows.loc[rows["attack"] == "clean", "accuracy"].item()
            at_eval = rows.loc[rows["attack"] == "pgd_ce", "accuracy"].item()
            one = curves.objectives_at(res.trials, res.evals, "attack:pgd_ce", radius).set_index(load.KEY)
            assert one.loc[(rec.experiment, rec.trial_id), "robust"] == pytest.approx(curve_accuracy(at_eval, radius))
        on_front = fronts.with_front(table)
        assert on_front["on_front"].any()
    pd.testing.assert_frame_equal(
        curves.objectives_at(res.trials, res.evals, views.WORST_SEEN, 0.2).dropna(subset=["robust"]).reset_index(drop=True),
        views.objectives(res.trials, res.evals, views.WORST_SEEN).dropna(subset=["robust"]).reset_index(drop=True))
    assert curves.objectives_at(res.trials, res.evals, views.WORST_SEEN, 0.05)["robust"].isna().all()
    # the unseen attacks are not run per radius
    assert curves.objectives_at(res.trials, res.evals, views.UNION_UNSEEN, 0.1)["robust"].isna().all()


def test_curve_table_of_a_selection(res, plain):
    fin = views.final_rows(res.evals)
    evaluated = list(fin[load.KEY].drop_duplicates().itertuples(index=False, name=None))
    unevaluated = next(k for k in res.trials[load.KEY].itertuples(index=False, name=None) if k not in evaluated)
    keys = [evaluated[0], unevaluated, evaluated[-1]]
    table = curves.curves(res.trials, res.evals, keys)
    assert list(table.columns) == ["trial", "experiment", "trial_id", "eps", "accuracy", "accuracy_low",
                                   "accuracy_high", "point"]
    assert set(table["trial"]) == {details.label(*evaluated[0]), details.label(*evaluated[-1])}
    worst = views.objectives(res.trials, res.evals, views.WORST_SEEN).set_index(load.KEY)
    for key in (evaluated[0], evaluated[-1]):
        mine = table[table["trial"] == details.label(*key)]
        assert mine["eps"].tolist() == [0.0, 0.1, 0.2, 0.3]
        assert mine["point"].tolist() == [curves.POINT_CLEAN, curves.POINT_RADIUS, curves.POINT_EPS_EVAL,
                                          curves.POINT_RADIUS]
        assert mine["accuracy"].iloc[0] == worst.loc[key, "clean"] and mine["accuracy"].iloc[2] == worst.loc[key, "robust"]
        assert mine["accuracy"].is_monotonic_decreasing
        # every point with the 95% interval of the row it came from
        assert (mine["accuracy_low"] <= mine["accuracy"]).all() and (mine["accuracy"] <= mine["accuracy_high"]).all()
        assert mine["accuracy_high"].gt(mine["accuracy_low"]).all()
        assert mine["accuracy_low"].iloc[2] == worst.loc[key, "robust_low"]
    # without a curve: clean and ε_eval only; no selection, nothing
    bare = curves.curves(plain.trials, plain.evals, keys)
    assert set(bare["point"]) == {curves.POINT_CLEAN, curves.POINT_EPS_EVAL} and len(bare) == 4
    assert curves.curves(res.trials, res.evals, []).empty


def test_eps_eval_falls_back_to_the_seen_attacks_budget(res):
    trials = res.trials.assign(eps_eval=math.nan)
    budgets = curves.eps_eval(trials, res.evals)
    assert set(budgets) == {0.2} and len(budgets) == len(views.final_rows(res.evals)[load.KEY].drop_duplicates())
