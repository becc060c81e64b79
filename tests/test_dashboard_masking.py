"""The final evaluation's masking checks in the dashboard: ``masking_checks`` read into a table
of counts per selected trial, and what fired marked on the objective table that the fronts
draw; old results without the column, empty and malformed values read as nothing fired.
Results written through raysearch.store."""
from __future__ import annotations

import json
import math

import pandas as pd

from dashboard import details, load, masking, views
from dashboard_support import write_experiment, write_results
from raysearch import store

CHECKS = {
    "gradient_free_beats_whitebox": {"count": 31, "n": 1000, "limit": 16.0, "fired": True,
                                     "what": "images Square fools and no white-box gradient attack fools"},
    "transfer_beats_whitebox": {"count": 2, "n": 1000, "limit": 16.0, "fired": False,
                                "what": "images the transfer attack fools and no white-box gradient attack fools"},
}


def test_checks_become_a_table_of_counts_with_fired_ones_first(tmp_path):
    exp = write_experiment(tmp_path / "r", "pgd_at", n=6, checks=CHECKS)
    res = load.load_results(tmp_path / "r")
    evaluated = res.trials[res.trials["final_worst_seen"].notna()]
    keys = list(evaluated[load.KEY].itertuples(index=False, name=None))
    plain = tuple(res.trials.loc[res.trials["final_worst_seen"].isna(), load.KEY].iloc[0])
    table = details.masking_checks(res.trials, keys + [plain])
    assert list(table.columns) == details.CHECK_COLUMNS
    assert len(table) == 2 * len(keys)  # the trial the final suite did not evaluate has none
    first = table[table["trial"] == details.label(*keys[0])]
    assert first["check"].tolist() == ["gradient_free_beats_whitebox", "transfer_beats_whitebox"]
    assert first.iloc[0][["count", "n", "limit", "fired"]].tolist() == [31, 1000, 16.0, True]
    assert first.iloc[1]["what"].startswith("images the transfer attack")
    # the front's table names what fired, for the evaluated trials only
    table = views.objectives(res.trials, res.evals, views.WORST_SEEN).set_index(load.KEY)
    assert set(table.loc[keys, "masking"]) == {"gradient_free_beats_whitebox"}
    assert table.loc[plain, "masking"] == ""
    assert store.read_rows(exp / store.TRIALS)[0]["masking_checks"]  # written as JSON text


def test_results_without_checks_or_with_bad_values_read_as_nothing_fired(tmp_path):
    write_results(tmp_path / "r")
    res = load.load_results(tmp_path / "r")  # written with masking_checks "{}" / ''
    assert views.objectives(res.trials, res.evals)["masking"].eq("").all()
    assert details.masking_checks(res.trials, res.trials[load.KEY].itertuples(index=False, name=None)).empty
    old = res.trials.drop(columns=["masking_checks", "masking_flags"])  # a file from before either column
    assert views.objectives(old, res.evals)["masking"].eq("").all()
    assert details.masking_checks(old, [tuple(old[load.KEY].iloc[0])]).empty
    for bad in (None, math.nan, "", "not json", "[1, 2]", json.dumps({"x": 3}), json.dumps({"x": {"count": "many"}})):
        parsed = masking.checks(bad)
        assert parsed == {} or parsed == {"x": {"count": None, "n": None, "limit": None, "fired": False, "what": ""}}
    # results with flags and no counts: the flags mark the trial
    flags = {"masking_checks": "", "masking_flags": "eot_gap;fgsm_beats_pgd"}
    assert masking.fired(flags) == ["eot_gap", "fgsm_beats_pgd"]
    assert masking.flag_list('["a", "b"]') == ["a", "b"] and masking.flag_list(math.nan) == []
    text = masking.fired_text(pd.DataFrame({"masking_checks": [json.dumps(CHECKS), ""], "masking_flags": ["", ""]}))
    assert text.tolist() == ["gradient_free_beats_whitebox", ""]
