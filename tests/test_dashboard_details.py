"""dashboard.details: chart selections, hyperparameters, per-attack accuracies and
gradient-masking flags of selected trials, on results folders written through raysearch.store."""
from __future__ import annotations

import pytest

from dashboard import details, load, views
from dashboard_support import write_experiment, write_results
from raysearch import store
from raysearch.schema import Stage


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_selection_details(root):
    res = load.load_results(root)
    fin = views.final_rows(res.evals)
    key = tuple(fin[load.KEY].iloc[0])
    other = tuple(res.trials.loc[res.trials["method"] == "standard", load.KEY].iloc[0])
    points = [{"customdata": [key[0], key[1], 0.9]}, {"customdata": list(key)}, {"x": 1},
              {"customdata": [other[0], other[1]]}]
    keys = details.selected_keys(points)
    assert keys == [key, other]
    hp = details.hyperparameters(res.trials, keys)
    assert list(hp.columns) == [details.label(*key), details.label(*other)]
    assert "eps_train" in hp.index and "weight_decay" in hp.index and "hp_lr" not in hp.index
    assert list(details.hyperparameters(res.trials, keys, searched=["weight_decay"]).index[:2]) == ["method", "weight_decay"]
    assert hp.loc["eps_train", details.label(*other)] == ""  # the standard trial has no such knob
    acc = details.attack_accuracies(res.evals, keys)
    mine = acc[acc["trial"] == details.label(*key)]
    assert set(mine["stage"]) == {"final"} and "square" in set(mine["attack"])
    assert set(mine.loc[mine["aggregate"], "attack"]) >= {"worst_seen", "union_unseen", "worst_pgd", "mean_corruption"}
    assert not mine.loc[mine["attack"].isin(["square", "clean", "pgd_eps_x2"]), "aggregate"].any()
    assert mine["threat"].tolist().index("seen") > mine["threat"].tolist().index("clean")
    theirs = acc[acc["trial"] == details.label(*other)]
    if not (views.final_rows(res.evals)["trial_id"] == other[1]).any():
        assert set(theirs["stage"]) == {"trial"} and theirs["epoch"].nunique() == 1
    assert details.selected_keys(None) == []


def test_per_attack_accuracies_carry_their_intervals(root):
    res = load.load_results(root)
    key = tuple(views.final_rows(res.evals)[load.KEY].iloc[0])
    acc = details.attack_accuracies(res.evals, [key])
    assert {"accuracy_low", "accuracy_high"} <= set(acc.columns) and acc["accuracy_low"].notna().all()
    assert ((acc["accuracy_low"] <= acc["accuracy"]) & (acc["accuracy"] <= acc["accuracy_high"])).all()
    stored = res.evals[(res.evals["trial_id"] == key[1]) & (res.evals["attack"] == "square")
                       & (res.evals["stage"] == Stage.FINAL)]
    square = acc[acc["attack"] == "square"]
    assert square["accuracy_high"].item() == stored["accuracy_high"].item()
    # rows not read through the store (no interval columns) get NaN ones
    bare = details.attack_accuracies(res.evals.drop(columns=["accuracy_low", "accuracy_high"]), [key])
    assert list(bare.columns) == list(acc.columns) and bare["accuracy_low"].isna().all()


def test_masking_flags_stored_and_checked(tmp_path):
    root = tmp_path / "r"
    exp_dir = write_experiment(root, "pgd_at", n=6, failed=False)
    evals = store.read_rows(exp_dir / store.EVALS)
    cands = list(dict.fromkeys(r["trial_id"] for r in evals if r["stage"] == Stage.FINAL))
    assert len(cands) >= 2
    for r in evals:
        if r["trial_id"] in cands[:2] and r["stage"] == Stage.FINAL and r["attack"] == "square":
            r["accuracy"] = 0.0  # gradient-free far below every gradient attack
    store.write_evals(exp_dir, evals)
    trials = store.read_rows(exp_dir / store.TRIALS)
    for t in trials:
        if t["trial_id"] == cands[0]:
            t["masking_flags"] = "gradient_free_beats_whitebox;fgsm_beats_pgd"
        elif t["trial_id"] == cands[1]:
            t["masking_flags"] = ""  # checked by the evaluator, nothing found: its verdict stands
    store.write_trials(exp_dir, trials)
    res = load.load_results(root)
    keys = [("pgd_at-digits", c) for c in cands[:2]]
    flags = details.masking_flags(res.trials, res.evals, keys).set_index("trial")["flags"]
    assert flags[details.label(*keys[0])] == ["gradient_free_beats_whitebox", "fgsm_beats_pgd"]
    assert flags[details.label(*keys[1])] == []
    never = next(t["trial_id"] for t in trials if t["trial_id"] not in cands)
    checked = details.masking_flags(res.trials, res.evals, keys + [("pgd_at-digits", never)])["checked_by"].tolist()
    assert checked == ["evaluator", "evaluator", ""]
    # without the evaluator's column the dashboard's own checks run
    bare = res.trials.drop(columns="masking_flags")
    flags = details.masking_flags(bare, res.evals, keys).set_index("trial")["flags"]
    assert any("gradient-free" in f for f in flags[details.label(*keys[1])])
    untouched = ("pgd_at-digits", cands[2]) if len(cands) > 2 else None
    if untouched:
        assert details.masking_flags(bare, res.evals, [untouched])["flags"].item() == []


def test_final_rows_without_the_evaluators_verdict_get_the_dashboards_checks(tmp_path):
    root = tmp_path / "r"
    exp_dir = write_experiment(root, "pgd_at", n=6, failed=False)
    evals = store.read_rows(exp_dir / store.EVALS)
    cand = next(r["trial_id"] for r in evals if r["stage"] == Stage.FINAL)
    for r in evals:
        if r["trial_id"] == cand and r["stage"] == Stage.FINAL and r["attack"] == "square":
            r["accuracy"] = 0.0
    store.write_evals(exp_dir, evals)
    trials = store.read_rows(exp_dir / store.TRIALS)
    for t in trials:  # final rows written, trials.parquet not yet updated by the evaluator
        t.update(final_clean_acc=None, final_worst_seen=None, final_union_unseen=None, masking_flags=None)
    store.write_trials(exp_dir, trials)
    res = load.load_results(root)
    flags = details.masking_flags(res.trials, res.evals, [("pgd_at-digits", cand)])
    assert flags["checked_by"].item() == "dashboard"
    assert any("gradient-free" in f for f in flags["flags"].item())
