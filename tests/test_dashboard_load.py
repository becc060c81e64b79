"""dashboard.load: finding and reading experiments below a results root, on results folders
written through raysearch.store and on missing, partial, corrupt and escaping files."""
from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboard import fronts, load, views
from dashboard_support import write_experiment, write_results
from raysearch import store
from raysearch.schema import EVAL_COLUMNS, TRIAL_COLUMNS


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def write_raw(path, rows) -> None:
    """A Parquet file with exactly these columns, as no store write would leave it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_loads_all_experiments_and_ignores_other_folders(root):
    res = load.load_results(root)
    assert res.experiments == ["pgd_at-digits", "standard-digits"]
    assert res.problems == []
    assert len(res.trials) == 11
    assert set(res.trials["method"]) == {"pgd_at", "standard"}
    # hyperparameters of the other method are NaN, not dropped
    assert res.trials.loc[res.trials["method"] == "standard", "hp_eps_train"].isna().all()
    assert res.trials.loc[res.trials["method"] == "pgd_at", "hp_attack_steps"].notna().all()
    assert set(res.evals["stage"]) == {"trial", "final"}
    assert res.recorded["pgd_at-digits"]["config"]["method"] == "pgd_at"


def test_root_that_is_one_experiment(root):
    res = load.load_results(root / "standard-digits")
    assert res.experiments == ["standard-digits"]
    assert len(res.trials) == 4


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(load.RootError, match="does not exist"):
        load.load_results(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(load.RootError, match="not a folder"):
        load.load_results(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    res = load.load_results(tmp_path / "empty")
    assert res.experiments == [] and res.trials.empty and res.problems == []
    # tables on no data are empty, not errors
    table = views.objectives(res.trials, res.evals, views.PROXY)
    assert table.empty and list(views.views(res.evals)) == [views.PROXY_VIEW]
    assert fronts.hypervolume_curve(fronts.with_front(table)).empty


def test_rows_come_back_with_every_schema_column(tmp_path):
    root = tmp_path / "r"
    write_raw(root / "old" / store.TRIALS, [{"trial_id": "t1", "clean_acc": 0.9, "epochs": 3}])
    write_raw(root / "old" / store.EVALS, [{"trial_id": "t1", "attack": "clean", "accuracy": 0.9}])
    res = load.load_results(root)
    assert set(TRIAL_COLUMNS) <= set(res.trials) and set(EVAL_COLUMNS) <= set(res.evals)
    trial = res.trials.iloc[0]
    # the folder names the experiment; a row without a method shows as unknown
    assert trial["experiment"] == "old" and trial["method"] == load.UNKNOWN_METHOD
    assert trial["epochs"] == 3.0 and math.isnan(trial["robust_acc"]) and trial["status"] == ""
    assert res.evals.iloc[0]["method"] == load.UNKNOWN_METHOD and math.isnan(res.evals.iloc[0]["eps"])
    (tmp_path / "none").mkdir()
    nothing = load.load_results(tmp_path / "none")  # no experiment: still every column, no rows
    assert set(TRIAL_COLUMNS) <= set(nothing.trials) and set(EVAL_COLUMNS) <= set(nothing.evals)
    assert nothing.trials["clean_acc"].dtype == float and nothing.evals["accuracy"].dtype == float


def test_corrupt_and_partial_files_become_problems(root):
    (root / "pgd_at-digits" / store.TRIALS).write_bytes(b"PAR1 this is not parquet")
    (root / "standard-digits" / store.EVALS).write_bytes(b"\x00" * 100)
    (root / "standard-digits" / store.EXPERIMENT).write_text("{not json")
    partial = root / "starting"
    store.write_json(partial / store.EXPERIMENT, {"config": {"method": "trades"}})
    truncated = root / "truncated"
    truncated.mkdir()
    whole = (root / "standard-digits" / store.TRIALS).read_bytes()
    (truncated / store.TRIALS).write_bytes(whole[: len(whole) // 2])
    res = load.load_results(root)
    def has(name, level, text):
        return any(p.experiment == name and p.level == level and text in p.message for p in res.problems)
    assert has("pgd_at-digits", "error", "trials.parquet is unreadable")
    assert has("standard-digits", "warning", "evals.parquet is unreadable")
    assert has("standard-digits", "warning", "experiment.json is unreadable")
    assert has("starting", "warning", "no trials.parquet yet")
    assert has("truncated", "error", "trials.parquet is unreadable")
    # what could be read is still there
    assert res.experiments == ["standard-digits"]
    assert len(res.trials) == 4 and res.evals.empty
    assert views.objectives(res.trials, res.evals)["clean"].notna().sum() == 3


def test_files_missing_columns_or_rows(tmp_path):
    root = tmp_path / "r"
    write_raw(root / "a" / store.TRIALS, [{"method": "x"}])
    store.write_trials(root / "b", [])
    store.write_trials(root / "c", [{"trial_id": "t1", "method": "pgd_at", "clean_acc": 0.9, "robust_acc": 0.4,
                                     "status": "completed", "finished_at": 1.0}])
    write_raw(root / "c" / store.EVALS, [{"trial_id": "t1", "stage": "final"}])
    res = load.load_results(root)
    assert any(p.experiment == "a" and p.level == "error" and "lacks column(s) trial_id" in p.message
               for p in res.problems)
    assert any(p.experiment == "b" and "no trials yet" in p.message for p in res.problems)
    assert any(p.experiment == "c" and "evals.parquet lacks" in p.message for p in res.problems)
    assert res.experiments == ["b", "c"]
    table = fronts.with_front(views.objectives(res.trials, res.evals))
    assert table["on_front"].tolist() == [True]


def test_paths_escaping_the_root_are_refused(tmp_path, root):
    outside = write_experiment(tmp_path / "elsewhere", "trades", n=3)
    os.symlink(outside, root / "linked")
    os.symlink(outside / store.TRIALS, root / "standard-digits" / "trials_link")
    (root / "standard-digits" / store.EVALS).unlink()
    os.symlink(outside / store.EVALS, root / "standard-digits" / store.EVALS)
    inner = root / "inner_link"
    os.symlink(root / "pgd_at-digits", inner)  # stays inside: allowed
    res = load.load_results(root)
    assert "linked" not in res.experiments
    assert any(p.experiment == "linked" and "outside the results root" in p.message for p in res.problems)
    assert any(p.experiment == "standard-digits" and "outside the results root" in p.message for p in res.problems)
    assert "trades" not in set(res.trials["method"]) and "trades" not in set(res.evals.get("method", []))
    assert "inner_link" in res.experiments


def test_fingerprint_changes_with_new_trials(root):
    before = load.fingerprint(root)
    assert before == load.fingerprint(root)
    write_experiment(root, "pgd_at", n=8, seed=1)
    assert load.fingerprint(root) != before
    new = root / "trades-digits"
    after = load.fingerprint(root)
    write_experiment(root, "trades", n=2)
    assert new.exists() and load.fingerprint(root) != after


def test_the_dashboard_reads_nothing_outside_its_results_root(tmp_path):
    root, outside = tmp_path / "results", tmp_path / "private"
    (root / "exp").mkdir(parents=True)
    outside.mkdir()
    store.write_trials(outside, [{"trial_id": "secret", "method": "standard", "status": "completed",
                                  "clean_acc": 0.9, "robust_acc": 0.1}])
    store.write_json(outside / "experiment.json", {"config": {"method": "secret-config"}})
    os.symlink(outside / store.TRIALS, root / "exp" / store.TRIALS)
    os.symlink(outside / "experiment.json", root / "exp" / "experiment.json")
    os.symlink(outside, root / "escape")
    res = load.load_results(root)
    assert "secret" not in set(res.trials.get("trial_id", []))
    assert "secret-config" not in json.dumps(res.recorded, default=str)
    assert "escape" not in res.experiments
    assert sum("outside the results root" in p.message for p in res.problems) >= 2
