"""dashboard.views: the proxy and final objective views on results folders written through
raysearch.store (per-epoch and final rows, aggregates present or missing)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard import load, views
from dashboard_support import SEEN, UNSEEN, write_results
from raysearch.schema import Status


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_proxy_view_uses_trial_summary_and_fills_running_trials(root):
    res = load.load_results(root)
    table = views.objectives(res.trials, res.evals, views.PROXY)
    t = res.trials.set_index(load.KEY)
    tab = table.set_index(load.KEY)
    done = t["status"] == Status.COMPLETED
    assert np.allclose(tab.loc[done[done].index, "clean"], t.loc[done, "clean_acc"])
    running = t.index[t["status"] == Status.RUNNING][0]
    ev = res.evals
    last = ev[(ev["trial_id"] == running[1]) & (ev["stage"] == "trial") & (ev["epoch"] == ev["epoch"].max())]
    assert tab.loc[running, "robust"] == pytest.approx(last.loc[last["attack"] == "pgd20_linf", "accuracy"].item())
    failed = t.index[t["status"] == Status.FAILED]
    # a failed trial's epoch-1 rows do not put it on a front
    assert len(failed) and tab.loc[failed, ["clean", "robust"]].isna().all().all()
    assert len(table) == len(res.trials)


def test_final_views_and_aggregates(root):
    res = load.load_results(root)
    keys = [v.key for v in views.views(res.evals)]
    assert keys[:3] == [views.PROXY, views.WORST_SEEN, views.UNION_UNSEEN]
    single = {a for a, _, _ in SEEN + UNSEEN}
    assert {k.split(":", 1)[1] for k in keys if k.startswith("attack:") and k[7:] in single} == single
    assert {"family:corruption", "family:pgd", "family:apgd"} <= set(keys)
    assert "family:stadv" not in keys  # one attack: its own view suffices
    assert {"attack:union_unseen_adversarial", "attack:mean_corruption"} <= set(keys)
    # clean, checks and the per-family worst cases (shown as family views) are no views of their own
    assert not {"attack:clean", "attack:worst_seen", "attack:worst_pgd", "attack:pgd_eps_x2"} & set(keys)
    fin = views.final_rows(res.evals)
    worst = views.objectives(res.trials, res.evals, views.WORST_SEEN).dropna(subset=["robust"])
    assert set(worst["trial_id"]) == set(fin["trial_id"])  # only the evaluated candidates
    for rec in worst.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        assert rec.robust == rows.loc[rows["attack"] == "worst_seen", "accuracy"].item()
        assert rec.clean == rows.loc[rows["attack"] == "clean", "accuracy"].item()
    fam = views.objectives(res.trials, res.evals, "family:corruption").dropna(subset=["robust"])
    for rec in fam.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        # the stored per-image worst case, below each member attack
        assert rec.robust == rows.loc[rows["attack"] == "worst_corruption", "accuracy"].item()
        assert rec.robust < rows.loc[rows["attack"].isin(["gaussian_noise_s3", "blur_s3"]), "accuracy"].min()
    one = views.objectives(res.trials, res.evals, "attack:square").dropna(subset=["robust"])
    for rec in one.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        assert rec.robust == rows.loc[rows["attack"] == "square", "accuracy"].item()


def test_view_labels_name_the_threat(root):
    res = load.load_results(root)
    labels = {v.key: v.label for v in views.views(res.evals)}
    assert labels["attack:square"] == "seen attack: square"
    assert labels["family:corruption"] == "unseen family: corruption (worst case over 2 attacks)"


def test_family_view_without_stored_worst_case_takes_the_worst_member(root):
    res = load.load_results(root)
    ev = res.evals[~res.evals["attack"].str.startswith("worst_")]
    fin = views.final_rows(ev)
    fam = views.objectives(res.trials, ev, "family:pgd").dropna(subset=["robust"])
    assert len(fam)
    for rec in fam.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & fin["attack"].isin(["pgd_ce", "pgd_cw"])]
        assert rec.robust == rows["accuracy"].min()


def test_clean_per_draw_is_not_the_clean_accuracy(root):
    res = load.load_results(root)
    fin = views.final_rows(res.evals)
    extra = fin[fin["attack"] == "clean"].assign(attack="clean_per_draw", accuracy=1.0)
    ev = pd.concat([res.evals, extra], ignore_index=True)
    table = views.objectives(res.trials, ev, views.WORST_SEEN).dropna(subset=["robust"])
    assert (table["clean"] < 1.0).all()


def test_aggregate_falls_back_to_worst_attack_when_not_stored(root):
    res = load.load_results(root)
    ev = res.evals[res.evals["attack"] != "union_unseen"]
    assert (views.final_rows(ev)["attack"] == "union_unseen_adversarial").any()  # not taken for the union
    fin = views.final_rows(ev)
    table = views.objectives(res.trials, ev, views.UNION_UNSEEN).dropna(subset=["robust"])
    assert len(table)
    for rec in table.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)
                   & (fin["threat"] == "unseen") & (fin["norm"] != "mixed")]
        assert rec.robust == rows["accuracy"].min()


def test_no_final_rows_leaves_final_views_out(tmp_path):
    root = write_results(tmp_path / "r", final=False)
    res = load.load_results(root)
    assert [v.key for v in views.views(res.evals)] == [views.PROXY]
    assert views.seen_unseen(res.trials, res.evals).empty
    assert views.objectives(res.trials, res.evals, views.WORST_SEEN)["robust"].isna().all()


def test_seen_unseen_retention(root):
    res = load.load_results(root)
    su = views.seen_unseen(res.trials, res.evals)
    assert len(su) == views.final_rows(res.evals)[load.KEY].drop_duplicates().shape[0]
    ratio = su["union_unseen"] / su["worst_seen"]
    assert np.allclose(su["retained"].dropna(), ratio[su["worst_seen"] > 0])


def _row(frame, key, attack):
    rows = frame[(frame["experiment"] == key[0]) & (frame["trial_id"] == key[1]) & (frame["attack"] == attack)]
    return rows.iloc[0]


def test_objectives_carry_the_interval_of_the_row_they_come_from(root):
    res = load.load_results(root)
    trials = res.trials.set_index(load.KEY)
    proxy = views.objectives(res.trials, res.evals, views.PROXY).set_index(load.KEY)
    done = trials.index[trials["status"] == Status.COMPLETED]
    for name, stored in (("clean", "clean_acc"), ("robust", "robust_acc")):
        for end in ("low", "high"):
            assert np.array_equal(proxy.loc[done, f"{name}_{end}"], trials.loc[done, f"{stored}_{end}"])
    assert ((proxy.loc[done, "robust_low"] < proxy.loc[done, "robust"])
            & (proxy.loc[done, "robust"] < proxy.loc[done, "robust_high"])).all()
    # a running trial: its last epoch's rows, each accuracy with its own interval
    running = trials.index[trials["status"] == Status.RUNNING][0]
    ev = res.evals[(res.evals["trial_id"] == running[1]) & (res.evals["stage"] == "trial")]
    last = ev[ev["epoch"] == ev["epoch"].max()]
    seen = _row(last, running, "pgd20_linf")
    assert (proxy.loc[running, "robust_low"], proxy.loc[running, "robust_high"]) == (seen["accuracy_low"],
                                                                                       seen["accuracy_high"])
    failed = trials.index[trials["status"] == Status.FAILED]
    assert proxy.loc[failed, views.CLEAN + views.ROBUST].isna().all().all()

    fin = views.final_rows(res.evals)
    worst = views.objectives(res.trials, res.evals, views.WORST_SEEN).dropna(subset=["robust"])
    assert len(worst)
    for rec in worst.itertuples():
        key = (rec.experiment, rec.trial_id)
        ends = ["accuracy_low", "accuracy_high"]
        assert (rec.robust_low, rec.robust_high) == tuple(_row(fin, key, "worst_seen")[ends])
        assert (rec.clean_low, rec.clean_high) == tuple(_row(fin, key, "clean")[ends])
    # without the stored aggregate: the worst unseen attack, with that attack's interval
    ev = res.evals[res.evals["attack"] != "union_unseen"]
    union = views.objectives(res.trials, ev, views.UNION_UNSEEN).dropna(subset=["robust"])
    for rec in union.itertuples():
        rows = views.final_rows(ev)
        rows = rows[(rows["trial_id"] == rec.trial_id) & (rows["threat"] == "unseen") & (rows["norm"] != "mixed")]
        assert rec.robust_low == rows.loc[rows["accuracy"].idxmin(), "accuracy_low"]
    su = views.seen_unseen(res.trials, res.evals)
    assert (su["worst_seen_low"] <= su["worst_seen"]).all() and (su["union_unseen"] <= su["union_unseen_high"]).all()
