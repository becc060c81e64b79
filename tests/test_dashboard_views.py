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
    assert "attack:mean_corruption" in keys
    # clean, checks and the per-family worst cases (shown as family views) are no views of their own
    assert not {"attack:clean", "attack:worst_seen", "attack:worst_pgd", "attack:union_corruptions",
                "attack:pgd_eps_x2"} & set(keys)
    fin = views.final_rows(res.evals)
    worst = views.objectives(res.trials, res.evals, views.WORST_SEEN).dropna(subset=["robust"])
    assert set(worst["trial_id"]) == set(fin["trial_id"])  # only the evaluated candidates
    summary = res.trials.set_index(load.KEY)
    for rec in worst.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        assert rec.robust == rows.loc[rows["attack"] == "worst_seen", "accuracy"].item()
        assert rec.clean == rows.loc[rows["attack"] == "clean", "accuracy"].item()
        # the trial's final summary, which the evals rows agree with
        key = (rec.experiment, rec.trial_id)
        assert (rec.clean, rec.robust) == tuple(summary.loc[key, ["final_clean_acc", "final_worst_seen"]])
    fam = views.objectives(res.trials, res.evals, "family:corruption").dropna(subset=["robust"])
    for rec in fam.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        # the stored per-image worst case, below each member attack
        assert rec.robust == rows.loc[rows["attack"] == "union_corruptions", "accuracy"].item()
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


def unsummarized(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials as an evaluation that wrote its evals rows and not yet its summary leaves them."""
    return trials.assign(final_clean_acc=np.nan, final_worst_seen=np.nan, final_union_unseen=np.nan)


def test_aggregate_falls_back_to_worst_adversarial_attack_when_not_stored(root):
    res = load.load_results(root)
    ev = res.evals[res.evals["attack"] != "union_unseen"]
    fin = views.final_rows(ev)
    table = views.objectives(unsummarized(res.trials), ev, views.UNION_UNSEEN).dropna(subset=["robust"])
    assert len(table)
    below = 0
    for rec in table.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)
                   & (fin["threat"] == "unseen") & (fin["norm"] != "mixed")]
        # the corruptions are reported apart from the union, also where they are the lowest unseen rows
        assert rec.robust == rows.loc[rows["family"] != "corruption", "accuracy"].min()
        below += rows["accuracy"].min() < rec.robust
    assert below
    # with the trials' summary, the summary
    summarized = views.objectives(res.trials, ev, views.UNION_UNSEEN).dropna(subset=["robust"]).set_index(load.KEY)
    stored = res.trials.set_index(load.KEY).loc[summarized.index, "final_union_unseen"]
    assert np.array_equal(summarized["robust"], stored)


def test_final_summary_in_trials_gives_the_final_views_without_evals_rows(root):
    """trials.parquet's final_clean_acc and final_worst_seen / final_union_unseen (with their
    intervals) are the final axes even where evals.parquet holds no final rows."""
    res = load.load_results(root)
    ev = res.evals[res.evals["stage"] != "final"]
    assert [v.key for v in views.views(ev)] == [views.PROXY]
    assert [v.key for v in views.views(ev, res.trials)] == [views.PROXY, views.WORST_SEEN, views.UNION_UNSEEN]
    t = res.trials.set_index(load.KEY)
    for view, column in ((views.WORST_SEEN, "final_worst_seen"), (views.UNION_UNSEEN, "final_union_unseen")):
        table = views.objectives(res.trials, ev, view).set_index(load.KEY)
        done = t.index[t[column].notna()]
        assert len(done) and table["robust"].notna().sum() == len(done)
        for name, stored in (("clean", "final_clean_acc"), ("robust", column)):
            for suffix in ("", "_low", "_high"):
                assert np.array_equal(table.loc[done, name + suffix], t.loc[done, stored + suffix])


def test_the_page_opens_on_worst_seen_once_a_final_evaluation_exists(tmp_path):
    res = load.load_results(write_results(tmp_path / "final"))
    assert views.default_view(views.views(res.evals, res.trials)) == views.WORST_SEEN
    plain = load.load_results(write_results(tmp_path / "proxy", final=False))
    opts = views.views(plain.evals, plain.trials)
    assert views.default_view(opts) == views.PROXY
    proxy = opts[0]
    # every label of the proxy says so
    assert proxy.proxy and all("proxy" in t.lower() for t in (proxy.label, proxy.robust_title, proxy.clean_axis))
    assert not any(v.proxy or "proxy" in v.label.lower() + v.robust_title for v in views.views(res.evals)[1:])


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
    # without the stored aggregate: the worst unseen adversarial attack, with that attack's interval
    ev = res.evals[res.evals["attack"] != "union_unseen"]
    union = views.objectives(unsummarized(res.trials), ev, views.UNION_UNSEEN).dropna(subset=["robust"])
    for rec in union.itertuples():
        rows = views.final_rows(ev)
        rows = rows[(rows["trial_id"] == rec.trial_id) & (rows["threat"] == "unseen") & (rows["norm"] != "mixed")
                    & (rows["family"] != "corruption")]
        assert rec.robust_low == rows.loc[rows["accuracy"].idxmin(), "accuracy_low"]
    su = views.seen_unseen(res.trials, res.evals)
    assert (su["worst_seen_low"] <= su["worst_seen"]).all() and (su["union_unseen"] <= su["union_unseen_high"]).all()
