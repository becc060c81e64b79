"""Portable results: the recorder stores checkpoint paths relative to the experiment folder, so a
finished experiment moved to another folder is evaluated again and opened in the dashboard from
there; older results with absolute paths still work, moved too."""
from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

from dashboard.load import load_results
from raysearch import store, trial_io
from raysearch.config import ExperimentConfig
from raysearch.evaluate.trials import evaluate_experiment
from raysearch.schema import Stage, Status
from raysearch.search.recorder import StoreCallback
from tests.conftest import run_cli

EPOCH = {"epoch": 1, "clean_acc": 0.5, "robust_acc": 0.25, "eval_n": 60, "eval_s": 0.5, "eval_eot": 1}


def test_the_recorder_stores_checkpoints_relative_to_the_experiment_folder(tmp_path):
    exp = ExperimentConfig(method="standard", name="exp", storage_path=str(tmp_path), max_epochs=2, num_samples=1)
    callback = StoreCallback(exp, exp.exp_dir)
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.05})
    callback.on_trial_start(0, [trial], trial)
    # Ray reports the absolute path of the checkpoint in <experiment>/train/<trial>/
    reported = str(exp.exp_dir.resolve() / "train" / "t1" / "checkpoint_000000")
    callback.on_trial_result(1, [trial], trial, {**EPOCH, "checkpoint_path": reported})
    assert store.read_rows(exp.exp_dir / store.TRIALS)[0]["checkpoint"] == "train/t1/checkpoint_000000"
    final = {"final": True, "status": Status.COMPLETED, "epoch": 2, "clean_acc": 0.6, "robust_acc": 0.3,
             "wall_s": 2.0, "checkpoint_path": reported.replace("000000", "000001")}
    callback.on_trial_result(2, [trial], trial, final)
    (row,) = store.read_rows(exp.exp_dir / store.TRIALS)
    assert row["checkpoint"] == "train/t1/checkpoint_000001" and row["status"] == Status.COMPLETED


def _relative_checkpoints(exp_dir):
    rows = store.read_rows(exp_dir / store.TRIALS)
    for row in rows:
        row["checkpoint"] = row["checkpoint"] and trial_io.relative_to_experiment(row["checkpoint"], exp_dir)
    store.write_trials(exp_dir, rows)
    return rows


def test_a_moved_experiment_is_evaluated_again_and_opened_in_the_dashboard(experiment, tmp_path):
    rows = _relative_checkpoints(experiment)
    assert {r["trial_id"]: r["checkpoint"] for r in rows if r["checkpoint"]} == {
        "t0": "t0/checkpoint_000003", "t1": "t1/checkpoint_000003"}
    moved = tmp_path / "another" / "place" / "exp-moved"
    shutil.move(experiment, moved)
    assert not experiment.exists()
    proc = run_cli("--experiment", str(moved), "--subset", "40", "--attacks", "fgsm", "--device", "cpu",
                   "--threads", "1", module="raysearch.evaluate", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = {r["trial_id"] for r in store.read_rows(moved / store.EVALS) if r["stage"] == Stage.FINAL}
    assert evaluated and evaluated <= {"t0", "t1"}
    trials = {r["trial_id"]: r for r in store.read_rows(moved / store.TRIALS)}
    assert all(math.isfinite(trials[t]["final_clean_acc"]) for t in evaluated)

    results = load_results(moved.parent)
    assert results.experiments == ["exp-moved"]
    assert not [p for p in results.problems if p.level == "error"]
    assert set(results.trials["trial_id"]) == {"t0", "t1", "t9"}
    final = results.evals[results.evals["stage"] == Stage.FINAL]
    assert set(final["trial_id"]) == evaluated and "fgsm" in set(final["attack"])
    shown = results.trials.set_index("trial_id")
    assert all(math.isfinite(shown.loc[t, "final_clean_acc"]) for t in evaluated)


def test_an_older_experiment_with_absolute_paths_is_evaluated_after_a_move(experiment, tmp_path):
    stored = {r["trial_id"]: r["checkpoint"] for r in store.read_rows(experiment / store.TRIALS)}
    assert stored["t0"].startswith(str(experiment))  # as results were written before paths were relative
    moved = tmp_path / "moved"
    shutil.move(experiment, moved)
    summary = evaluate_experiment(moved, ["t0"], subset=20, attacks=["fgsm"], device="cpu", front=False, threads=1)
    assert set(summary["trials"]) == {"t0"} and not summary["failed"]
