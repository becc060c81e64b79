"""Early-stopping schedulers (raysearch.search.schedulers): the registry the command line takes
its choices from, and ``--scheduler asha`` end to end on a real local Ray (dashboard on, so
stopped trials' Train placement groups are cleaned up): trials are stopped early, recorded as
completed with the epochs they ran and their last metrics, and told to Optuna as complete with
those values."""
from __future__ import annotations

import math
import sqlite3
import subprocess
import sys

import pytest

from raysearch import store
from raysearch.config import ExperimentConfig
from raysearch.schema import Status
from raysearch.search.schedulers import SCHEDULERS, make_scheduler
from tests.conftest import ROOT, run_cli

TRIALS, EPOCHS = 6, 2


# ---------------------------------------------------------------- the registry

def test_none_means_no_scheduler_and_asha_is_registered():
    assert list(SCHEDULERS)[0] == "none" and "asha" in SCHEDULERS
    assert make_scheduler(ExperimentConfig(method="standard")) is None


def test_asha_ranks_trials_by_clean_times_robust_accuracy_per_epoch():
    from ray.tune.schedulers import ASHAScheduler

    exp = ExperimentConfig(method="standard", scheduler="asha", max_epochs=9, grace_period=1, reduction_factor=3.0)
    scheduler = make_scheduler(exp)
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._metric == "clean_x_robust" and scheduler._mode == "max"
    assert scheduler._time_attr == "epoch" and scheduler._max_t == 9 and not scheduler._stop_last_trials
    # rungs at grace_period · reduction_factor^k epochs
    assert [epochs for epochs, _ in scheduler._brackets[0]._rungs] == [9, 3, 1]


def test_the_registry_imports_no_ray():
    # the command line validates --scheduler against it before Ray is imported
    code = "import sys; import raysearch.search.schedulers; print('ray' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


# ---------------------------------------------------------------- ASHA end to end

@pytest.fixture(scope="module")
def asha_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("asha")
    proc = run_cli("--method", "pgd_at", "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "3",
                   "--num-samples", str(TRIALS), "--max-epochs", str(EPOCHS), "--eval-size", "60",
                   "--set", "attack_steps=2", "--no-final-eval", "--storage-path", str(root), "--name", "asha",
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "asha", proc.stdout


@pytest.mark.slow
def test_asha_stops_trials_and_records_them_with_their_last_epoch(asha_search):
    exp_dir, out = asha_search
    rows = store.read_rows(exp_dir / store.TRIALS)
    assert len(rows) == TRIALS and {r["status"] for r in rows} == {Status.COMPLETED}
    stopped = [r for r in rows if r["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    assert all(1 <= r["epochs"] < EPOCHS for r in stopped)
    assert all(r["epochs"] == EPOCHS for r in rows if not r["stopped_early"])
    assert sum(r["epochs"] for r in rows) < TRIALS * EPOCHS  # the point: fewer trial-epochs
    evals = store.read_rows(exp_dir / store.EVALS)
    for r in stopped:
        mine = {e["attack"]: e for e in evals if e["trial_id"] == r["trial_id"] and e["epoch"] == r["epochs"]}
        assert r["clean_acc"] == mine["clean"]["accuracy"] and r["robust_acc"] == mine["pgd20_linf"]["accuracy"]
        assert not [e for e in evals if e["trial_id"] == r["trial_id"] and e["epoch"] > r["epochs"]]
        assert r["wall_s"] > 0 and r["device_s"] >= r["wall_s"]
        assert f"trial {r['trial_id']} stopped early after {r['epochs']} epoch(s)" in out
    # stopped trials count on the printed front like any completed trial
    assert f"of {TRIALS} completed trials" in out


@pytest.mark.slow
def test_optuna_is_told_the_stopped_trials_last_values(asha_search):
    exp_dir, _ = asha_search
    rows = {r["trial_id"]: r for r in store.read_rows(exp_dir / store.TRIALS)}
    with sqlite3.connect(exp_dir / "optuna.db") as con:
        states = [s for (s,) in con.execute("select state from trials")]
        values = sorted(tuple(v for _, v in sorted(group)) for group in _values_by_trial(con))
    assert states == ["COMPLETE"] * TRIALS
    expected = sorted((r["clean_acc"], r["robust_acc"]) for r in rows.values())
    assert len(values) == TRIALS
    for got, want in zip(values, expected):
        assert all(math.isclose(g, w, abs_tol=1e-9) for g, w in zip(got, want))


def _values_by_trial(con):
    groups: dict[int, list] = {}
    for trial_id, objective, value in con.execute("select trial_id, objective, value from trial_values"):
        groups.setdefault(trial_id, []).append((objective, value))
    return groups.values()
