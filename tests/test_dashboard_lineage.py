"""The lineage of population-based-training trials in the dashboard: the clone events behind a
trial's weights (``lineage_json``, with ``parent_trial_id`` and ``cloned_at_epoch``) as a
table and a chain, on results written through raysearch.store; trials that never cloned and
results from before these columns have none."""
from __future__ import annotations

import pandas as pd

from dashboard import details, lineage, load
from dashboard_support import write_experiment

FIRST = {"epoch": 2, "parent": "pgd__00000", "changed": {"lr": [0.1, 0.125]}}
SECOND = {"epoch": 4, "parent": "pgd__00001", "changed": {"eps_train": [0.12, 0.096], "attack_steps": [5, 6]}}
LINEAGE = {"pgd__00001": [FIRST], "pgd__00002": [FIRST, SECOND]}  # 2 cloned 1, which had cloned 0


def test_a_clones_events_and_chain(tmp_path):
    write_experiment(tmp_path / "r", "pgd_at", n=4, scheduler="mopbt", lineage=LINEAGE)
    res = load.load_results(tmp_path / "r")
    exp = "pgd_at-digits"
    t = res.trials.set_index("trial_id")
    assert (t.loc["pgd__00002", "parent_trial_id"], t.loc["pgd__00002", "cloned_at_epoch"]) == ("pgd__00001", 4)
    keys = [(exp, "pgd__00002"), (exp, "pgd__00000"), (exp, "pgd__00001")]
    table = lineage.lineage(res.trials, keys)
    assert list(table.columns) == lineage.EVENT_COLUMNS
    two, one = details.label(exp, "pgd__00002"), details.label(exp, "pgd__00001")
    assert table["trial"].tolist() == [two, two, one]  # the root trial has no events
    assert table["epoch"].tolist() == [2, 4, 2] and table["parent"].tolist() == ["pgd__00000", "pgd__00001",
                                                                                  "pgd__00000"]
    assert table["changed"].tolist() == ["lr: 0.1 → 0.125", "eps_train: 0.12 → 0.096, attack_steps: 5 → 6",
                                         "lr: 0.1 → 0.125"]
    assert lineage.chain(table, two) == "pgd__00001 (epoch 4) ← pgd__00000 (epoch 2)"
    assert lineage.chain(table, details.label(exp, "pgd__00000")) == ""


def test_without_lineage_json_the_parent_columns_give_one_event_and_old_results_none(tmp_path):
    write_experiment(tmp_path / "r", "pgd_at", n=3)
    res = load.load_results(tmp_path / "r")
    keys = list(res.trials[load.KEY].itertuples(index=False, name=None))
    assert lineage.lineage(res.trials, keys).empty  # a search without mopbt: '[]', '' and 0
    old = res.trials.drop(columns=["lineage_json", "parent_trial_id", "cloned_at_epoch"])
    assert lineage.lineage(old, keys).empty
    partial = res.trials.assign(lineage_json=["not json", "", "[]"], parent_trial_id=["", "pgd__00000", ""],
                                cloned_at_epoch=[0, 3, 0])
    table = lineage.lineage(partial, keys)
    assert table[["epoch", "parent", "changed"]].to_dict("records") == [
        {"epoch": 3, "parent": "pgd__00000", "changed": ""}]
    assert lineage.events({"lineage_json": '[{"epoch": 1}, 5, {"parent": "x", "epoch": null}]'}) == [
        {"epoch": None, "parent": "x", "changed": ""}]
    assert lineage.lineage(pd.DataFrame(columns=load.KEY), keys).empty
