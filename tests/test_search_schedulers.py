"""Schedulers (raysearch.search.schedulers) from the command line on a real local Ray (dashboard
on, so stopped and paused trials' Train placement groups are cleaned up), each followed by the
final attack suite: ``--scheduler moasha`` stops trials, records them with the epochs they ran
and their last metrics, and tells Optuna PRUNED for them; ``--scheduler mopbt`` clones and
perturbs trials, records their lineage, and a search killed mid-way resumes with ``--resume``
with no trial lost or doubled. Decisions on hand-computed examples: test_search_moasha and
test_search_mopbt."""
from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import sqlite3

import psutil
import pytest

from raysearch import store, trial_io
from raysearch.config import ExperimentConfig
from raysearch.schema import Status
from raysearch.search.recorder import PROXY_ROW
from raysearch.search.schedulers import SCHEDULERS, make_scheduler
from tests.conftest import python_c, run_cli
from tests.test_search_cluster import kill_tree, rows, wait_for
from tests.test_search_faults import start_cli

# one trial at a time: the order trials reach the rung, and so which ones MO-ASHA stops, is the
# same in every run (trials side by side reach it in either order)
TRIALS, EPOCHS = 4, 2
FINAL_N = 20
FINAL = ("--final-eval-size", str(FINAL_N), "--final-candidates", "1", "--eot-samples", "2")


# ---------------------------------------------------------------- the registry

def test_the_registry_offers_none_moasha_and_mopbt():
    assert list(SCHEDULERS) == ["none", "moasha", "mopbt"]
    assert make_scheduler(ExperimentConfig(method="standard")) is None


def test_the_registry_imports_no_ray():
    # the command line validates --scheduler against it before Ray is imported
    code = "import sys; import raysearch.search.schedulers; print('ray' in sys.modules)"
    out = python_c(code)
    assert out.strip() == "False"


# ---------------------------------------------------------------- MO-ASHA end to end

@pytest.fixture(scope="module")
def moasha_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("moasha")
    proc = run_cli("--method", "pgd_at", "--scheduler", "moasha", "--grace-period", "1", "--reduction-factor", "3",
                   "--num-samples", str(TRIALS), "--max-concurrent", "1", "--max-epochs", str(EPOCHS), "--eval-size", "60",
                   "--set", "attack_steps=2", *FINAL, "--storage-path", str(root), "--name", "moasha",
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "moasha", proc.stdout


@pytest.mark.slow
def test_moasha_stops_trials_and_records_them_with_their_last_epoch(moasha_search):
    exp_dir, out = moasha_search
    rows_ = store.read_rows(exp_dir / store.TRIALS)
    assert len(rows_) == TRIALS and {r["status"] for r in rows_} == {Status.COMPLETED}
    assert {r["scheduler"] for r in rows_} == {"moasha"}
    stopped = [r for r in rows_ if r["stopped_early"]]
    assert stopped, "MO-ASHA stopped no trial"
    assert all(r["epochs"] == 1 for r in stopped)
    assert all(r["epochs"] == EPOCHS for r in rows_ if not r["stopped_early"])
    evals = store.read_rows(exp_dir / store.EVALS)
    for r in stopped:
        mine = {e["attack"]: e for e in evals if e["trial_id"] == r["trial_id"] and e["epoch"] == r["epochs"]}
        assert r["clean_acc"] == mine["clean"]["accuracy"] and r["robust_acc"] == mine[PROXY_ROW]["accuracy"]
        assert not [e for e in evals if e["trial_id"] == r["trial_id"] and 0 < e["epoch"] > r["epochs"]]
        assert f"trial {r['trial_id']} stopped early after {r['epochs']} epoch(s)" in out
    # the final suite ran after the search, on the proxy front's best candidate
    assert any(r["final_n"] == FINAL_N and r["final_worst_seen"] >= 0 for r in rows_)


@pytest.mark.slow
def test_optuna_is_told_pruned_for_stopped_trials_and_complete_for_the_others(moasha_search):
    exp_dir, _ = moasha_search
    rows_ = {r["trial_id"]: r for r in store.read_rows(exp_dir / store.TRIALS)}
    with sqlite3.connect(exp_dir / "optuna.db") as con:
        states = [s for (s,) in con.execute("select state from trials order by number")]
        values = sorted(tuple(v for _, v in sorted(group)) for group in _values_by_trial(con))
        epochs = sorted(json.loads(v) for (v,) in con.execute(
            "select value_json from trial_user_attributes where key = 'stopped_at_epoch'"))
    n_stopped = sum(r["stopped_early"] for r in rows_.values())
    assert sorted(states) == sorted(["COMPLETE"] * (TRIALS - n_stopped) + ["PRUNED"] * n_stopped)
    assert epochs == [1] * n_stopped
    expected = sorted((r["clean_acc"], r["robust_acc"]) for r in rows_.values() if not r["stopped_early"])
    assert len(values) == len(expected)  # pruned trials have no values
    for got, want in zip(values, expected):
        assert all(math.isclose(g, w, abs_tol=1e-9) for g, w in zip(got, want))


def _values_by_trial(con):
    groups: dict[int, list] = {}
    for trial_id, objective, value in con.execute("select trial_id, objective, value from trial_values"):
        groups.setdefault(trial_id, []).append((objective, value))
    return groups.values()


# ---------------------------------------------------------------- MO-PBT killed, resumed, end to end

@pytest.mark.slow
def test_a_killed_mopbt_search_resumes_with_every_trial_once_and_its_lineage(tmp_path):
    exp_dir = tmp_path / "pbt"
    epochs = 3
    # two members fit at once on two cores; each epoch's proxy is fresh, so a ranking every epoch;
    # small batches make epochs of seconds, so the kill lands while a clone trains
    args = ("--method", "pgd_at", "--scheduler", "mopbt", "--num-samples", "2", "--max-epochs", str(epochs),
            "--perturbation-interval", "1", "--eval-size", "60", "--eval-steps", "5", "--set", "attack_steps=2",
            "--set", "batch_size=16",
            *FINAL, "--storage-path", str(tmp_path), "--name", "pbt")
    proc = start_cli(*args)
    try:
        def clone_saved():
            """A clone still training whose new config Ray Tune has saved (else the resumed search
            would restart it as it was before it cloned, which is consistent but shows nothing)."""
            saved = "".join(p.read_text() for p in exp_dir.glob("experiment_state-*.json"))
            for r in rows(exp_dir):
                if r["status"] == Status.RUNNING and r["lineage_json"] not in (None, "[]"):
                    event = json.loads(r["lineage_json"])[-1]
                    if re.search(rf"pbt/{r['trial_id']}/\d+-{event['parent']}-epoch{event['epoch']}", saved):
                        return True
            return False

        wait_for("a clone training in the population, saved", clone_saved, 500, proc=proc, every=0.5)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    for p in tree[1:]:  # the rest of the machine's search goes down with it (test_search_faults
        with contextlib.suppress(psutil.NoSuchProcess):  # shows it does so by itself)
            p.kill()
    psutil.wait_procs(tree[1:], timeout=30)
    before = {r["trial_id"]: r for r in rows(exp_dir)}

    resumed = run_cli(*args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = rows(exp_dir)
    assert sorted(r["trial_id"] for r in trials) == sorted(before)  # the same population, each once
    assert all(r["status"] == Status.COMPLETED and r["epochs"] == epochs for r in trials), trials
    assert not (exp_dir / "optuna.db").exists()  # no Optuna in this mode
    keys = [(r["trial_id"], r["epoch"], r["attack"]) for r in rows(exp_dir, store.EVALS)]
    assert len(keys) == len(set(keys)), "an epoch was recorded twice"
    by_id = {r["trial_id"]: r for r in trials}
    clones = [r for r in trials if r["parent_trial_id"]]
    assert clones and all(json.loads(r["lineage_json"]) for r in clones)
    for r in clones:
        event = json.loads(r["lineage_json"])[-1]
        assert event["parent"] in by_id and event["parent"] != r["trial_id"]
        assert (event["epoch"], event["parent"]) == (r["cloned_at_epoch"], r["parent_trial_id"])
        # the copy it started from is the parent's checkpoint of that epoch, trained with the
        # parent's values; the trial went on with the new ones
        (seed,) = (exp_dir / "pbt" / r["trial_id"]).glob(f"*-{event['parent']}-epoch{event['epoch']}")
        meta = trial_io.load_meta(seed)
        assert meta["epoch"] + 1 == event["epoch"]
        for hp, (old, new) in event["changed"].items():
            assert meta["config"][hp] == pytest.approx(old) and r[f"hp_{hp}"] == pytest.approx(new)
        # its Train run was a new one, started from that copy (resumed from its epoch, not from 0)
        assert (exp_dir / "train" / f"{r['trial_id']}-clone{seed.name}").is_dir()
        assert r["resumed_from"] >= event["epoch"]
    assert any(r["final_n"] == FINAL_N for r in trials)  # the final suite ran after the resumed search
