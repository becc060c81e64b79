"""The Tune callback that keeps the results files current (raysearch.search.recorder), fed the
results Ray Tune would deliver. What ``--resume`` reconciles is in test_search_faults."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from raysearch import store
from raysearch.config import ExperimentConfig
from raysearch.schema import Status
from raysearch.search.recorder import StoreCallback
from raysearch.stats import wilson

EXP = ExperimentConfig(method="pgd_at", name="e", eval_steps=5, eps_eval=0.2, max_epochs=3, num_samples=2,
                       workers_per_trial=2, sets=(("attack_steps", 2),))
EPOCH = {"epoch": 1, "clean_acc": 0.5, "robust_acc": 0.25, "eval_n": 60, "eval_s": 0.5, "eval_eot": 1,
         "nodes": "127.0.0.1", "node_ids": "n1", "checkpoint_path": "/c/1", "resumed_from": 0}


@pytest.fixture
def started(tmp_path):
    callback = StoreCallback(EXP, tmp_path)
    trial = SimpleNamespace(trial_id="t1", config={"eps_train": 0.1, "lr": 0.05})
    callback.on_trial_start(0, [trial], trial)
    return callback, trial, tmp_path


def test_a_started_trial_is_a_running_row_with_its_full_config(started):
    _, _, exp_dir = started
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["status"] == Status.RUNNING and row["epochs"] == 0 and row["stopped_early"] is False
    assert (row["experiment"], row["trial_id"], row["method"], row["dataset"], row["arch"]) == (
        "e", "t1", "pgd_at", "digits", "auto")
    assert row["eps_eval"] == 0.2 and row["num_workers"] == 2 and row["started_at"] > 0
    # sampled < --set; epochs from the experiment; every field its own column
    assert row["hp_eps_train"] == 0.1 and row["hp_lr"] == 0.05 and row["hp_attack_steps"] == 2
    assert row["hp_epochs"] == 3 and json.loads(row["config_json"])["epochs"] == 3
    assert math.isnan(row["clean_acc"]) and row["error"] is None


def test_an_epoch_updates_the_row_and_adds_its_two_proxy_rows(started, capsys):
    callback, trial, exp_dir = started
    callback.on_trial_result(1, [trial], trial, {**EPOCH, "train_started_at": callback.trials["t1"]["started_at"] + 2})
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert (row["epochs"], row["clean_acc"], row["robust_acc"], row["checkpoint"]) == (1, 0.5, 0.25, "/c/1")
    assert row["nodes"] == "127.0.0.1" and row["node_ids"] == "n1" and row["resumed_from"] == 0
    assert row["startup_s"] == pytest.approx(2)
    evals = {r["attack"]: r for r in store.read_rows(exp_dir / store.EVALS)}
    assert set(evals) == {"clean", "proxy_robust"}
    clean, pgd = evals["clean"], evals["proxy_robust"]
    assert (clean["stage"], clean["epoch"], clean["threat"], clean["norm"], clean["accuracy"]) == (
        "trial", 1, "clean", "none", 0.5)
    assert math.isnan(clean["eps"]) and clean["n"] == 60 and clean["seconds"] == 0.5
    assert (pgd["family"], pgd["threat"], pgd["norm"], pgd["eps"], pgd["accuracy"]) == (
        "proxy", "seen", "linf", 0.2, 0.25)
    assert "trial t1 epoch 1/3: clean 0.500  robust 0.250" in capsys.readouterr().out


def test_progress_says_which_epoch_the_proxy_comes_from(started, capsys):
    """With --eval-every above 1, an epoch before the first proxy has none to print, and an epoch
    between two proxies prints the last one with the epoch it was measured after."""
    callback, trial, _ = started
    nan = {"clean_acc": math.nan, "robust_acc": math.nan, "eval_n": 0}
    callback.on_trial_result(1, [trial], trial, {**EPOCH, **nan, "proxy_epoch": 0})
    callback.on_trial_result(2, [trial], trial, {**EPOCH, "epoch": 2, "proxy_epoch": 2})
    callback.on_trial_result(3, [trial], trial, {**EPOCH, "epoch": 3, "proxy_epoch": 2})
    out = capsys.readouterr().out
    assert "trial t1 epoch 1/3: proxy not measured yet  (" in out and "nan" not in out
    assert "trial t1 epoch 2/3: clean 0.500  robust 0.250  (" in out
    assert "trial t1 epoch 3/3: clean 0.500  robust 0.250 (proxy of epoch 2)  (" in out


def test_proxy_rows_say_how_the_proxy_measured(started):
    """Steps and restarts as the worker reports them (the experiment's --eval-steps and one
    restart where it does not), no queries, and the rand protocol for a randomized predictor
    (more than one draw per gradient). An epoch that re-reports an earlier proxy
    (``proxy_epoch``) lands on that epoch's rows instead of adding a copy."""
    callback, trial, exp_dir = started
    callback.on_trial_result(1, [trial], trial, EPOCH)
    evals = {r["attack"]: r for r in store.read_rows(exp_dir / store.EVALS)}
    spent = {name: (r["iterations"], r["restarts"], r["queries"], r["protocol"]) for name, r in evals.items()}
    assert spent == {"clean": (0, 0, 0, "standard"), "proxy_robust": (5, 1, 0, "standard")}
    rand = {**EPOCH, "epoch": 2, "eval_eot": 10, "eval_calls": 10, "eval_iterations": 7, "eval_restarts": 2}
    callback.on_trial_result(2, [trial], trial, rand)
    pgd = {(r["epoch"], r["attack"]): r for r in store.read_rows(exp_dir / store.EVALS)}[(2, "proxy_robust")]
    assert (pgd["iterations"], pgd["restarts"], pgd["protocol"], pgd["scoring_calls"]) == (7, 2, "rand", 10)
    callback.on_trial_result(3, [trial], trial, {**rand, "epoch": 3, "proxy_epoch": 2})
    assert sorted({r["epoch"] for r in store.read_rows(exp_dir / store.EVALS)}) == [1, 2]
    # before its first measurement a trial reports proxy_epoch 0 and NaN accuracies: no rows
    other = SimpleNamespace(trial_id="t2", config={"eps_train": 0.1, "lr": 0.05})
    callback.on_trial_start(4, [trial, other], other)
    callback.on_trial_result(4, [trial, other], other, {**EPOCH, "proxy_epoch": 0, "clean_acc": math.nan,
                                                        "robust_acc": math.nan, "eval_n": 0})
    assert not [r for r in store.read_rows(exp_dir / store.EVALS) if r["trial_id"] == "t2"]


def test_the_proxy_accuracies_are_stored_with_their_n_and_interval(started):
    """trials.parquet keeps the validation images behind clean_acc/robust_acc (eval_n), so the
    store derives their 95% intervals, as it does for the proxy's evals rows."""
    callback, trial, exp_dir = started
    callback.on_trial_result(1, [trial], trial, EPOCH)
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["eval_n"] == 60 and (row["robust_acc_low"], row["robust_acc_high"]) == wilson(15, 60)
    evals = {r["attack"]: r for r in store.read_rows(exp_dir / store.EVALS)}
    clean = evals["clean"]
    assert (clean["accuracy_low"], clean["accuracy_high"]) == (row["clean_acc_low"], row["clean_acc_high"])
    final = {"final": True, "status": Status.COMPLETED, "epoch": 1, "clean_acc": 0.5, "robust_acc": 0.25, "wall_s": 3.0}
    callback.on_trial_result(2, [trial], trial, final)  # a final report without eval_n keeps the epoch's
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["eval_n"] == 60 and row["clean_acc_low"] == wilson(30, 60)[0]


def test_a_trials_wall_time_counts_its_start_up(started):
    """wall_s runs from the trial's start as the recorder saw it, so a trial whose actor and
    workers took 25 s to start and 2 s to train lasted 27 s, not the trial function's 2 s."""
    callback, trial, exp_dir = started
    callback.run_started["t1"] -= 27
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    callback.on_trial_result(1, [trial], trial, {**EPOCH, "train_started_at": row["started_at"] + 25})
    callback.on_trial_result(2, [trial], trial, {"final": True, "status": Status.COMPLETED, "epoch": 1,
                                                 "clean_acc": 0.5, "robust_acc": 0.25, "wall_s": 2.0})
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["startup_s"] == pytest.approx(25.0) and row["wall_s"] == pytest.approx(27.0, abs=0.5)


def test_a_trial_stopped_by_the_scheduler_is_completed_with_its_last_epoch(started, capsys):
    callback, trial, exp_dir = started
    callback.on_trial_result(1, [trial], trial, EPOCH)
    callback.on_trial_complete(2, [trial], trial)
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["status"] == Status.COMPLETED and row["stopped_early"] is True and row["epochs"] == 1
    assert row["device_s"] == pytest.approx(2 * row["wall_s"])  # two CPU workers
    assert "[1/2] trial t1 stopped early after 1 epoch(s)" in capsys.readouterr().out


def test_the_final_report_of_a_failed_trial_records_why(started, capsys):
    callback, trial, exp_dir = started
    callback.run_started["t1"] -= 3  # it ran for 3 s
    callback.on_trial_result(1, [trial], trial, {"final": True, "status": Status.FAILED, "error": "diverged: x",
                                                 "wall_s": 1.0, "clean_acc": math.nan, "robust_acc": math.nan})
    callback.on_trial_complete(2, [trial], trial)  # Tune's completion changes nothing after that
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["status"] == Status.FAILED and row["error"] == "diverged: x" and row["device_s"] == pytest.approx(6.0, abs=0.2)
    assert "[1/2] trial t1 done in 3s: FAILED: diverged: x" in capsys.readouterr().out


def test_a_driver_error_is_recorded_from_its_error_file(started, tmp_path_factory):
    callback, trial, exp_dir = started
    error_file = tmp_path_factory.mktemp("err") / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: the driver died\n\n")
    trial.error_file = str(error_file)
    callback.on_trial_error(1, [trial], trial)
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["status"] == Status.FAILED and row["error"] == "RuntimeError: the driver died"
