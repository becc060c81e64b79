"""``--scheduler asha`` end to end on a real local Ray (dashboard on, so stopped trials' Train
placement groups are cleaned up): trials are stopped early, recorded as completed with the
epochs they ran and their last metrics, and told to Optuna as complete with those values."""
from __future__ import annotations

import math
import sqlite3

import pytest

from raysearch import store
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TRIALS, EPOCHS = 6, 2


@pytest.fixture(scope="module")
def asha_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("asha")
    proc = run_cli("--method", "pgd_at", "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "3",
                   "--num-samples", str(TRIALS), "--max-epochs", str(EPOCHS), "--eval-size", "60",
                   "--set", "attack_steps=2", "--no-final-eval", "--storage-path", str(root), "--name", "asha",
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "asha", proc.stdout


def test_asha_stops_trials_and_records_them_with_their_last_epoch(asha_search):
    exp, out = asha_search
    rows = store.read_rows(exp / store.TRIALS)
    assert len(rows) == TRIALS and {r["status"] for r in rows} == {store.COMPLETED}
    stopped = [r for r in rows if r["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    assert all(1 <= r["epochs"] < EPOCHS for r in stopped)
    assert all(r["epochs"] == EPOCHS for r in rows if not r["stopped_early"])
    assert sum(r["epochs"] for r in rows) < TRIALS * EPOCHS  # the point: fewer trial-epochs
    evals = store.read_rows(exp / store.EVALS)
    for r in stopped:
        mine = {e["attack"]: e for e in evals if e["trial_id"] == r["trial_id"] and e["epoch"] == r["epochs"]}
        assert r["clean_acc"] == mine["clean"]["accuracy"] and r["robust_acc"] == mine["pgd20_linf"]["accuracy"]
        assert not [e for e in evals if e["trial_id"] == r["trial_id"] and e["epoch"] > r["epochs"]]
        assert r["wall_s"] > 0 and r["device_s"] >= r["wall_s"]
        assert f"trial {r['trial_id']} stopped early after {r['epochs']} epoch(s)" in out
    # stopped trials count on the printed front like any completed trial
    assert f"of {TRIALS} completed trials" in out


def test_optuna_is_told_the_stopped_trials_last_values(asha_search):
    exp, _ = asha_search
    rows = {r["trial_id"]: r for r in store.read_rows(exp / store.TRIALS)}
    with sqlite3.connect(exp / "optuna.db") as con:
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
