"""The experiment level of the final evaluation (raysearch.evaluate.trials): candidates,
validation of a request, results written per trial, one failed trial keeping the others."""
from __future__ import annotations

import math

import pytest

from raysearch import store, trial_io
from raysearch.evaluate import checks, trials
from raysearch.evaluate.__main__ import main
from tests.evaluate_support import QUICK


def test_evaluate_experiment_writes_results(experiment):
    messages = []
    summary = trials.evaluate_experiment(experiment, trial_ids=["t0", "t1"], subset=60, attacks=QUICK,
                                         device="cpu", progress=messages.append)
    assert set(summary["trials"]) == {"t0", "t1"}
    assert messages
    evals = store.read_rows(experiment / store.EVALS)
    trial_rows = [r for r in evals if r["stage"] == "trial"]
    assert len(trial_rows) == 2, "per-epoch rows must be kept"
    final = [r for r in evals if r["stage"] == "final"]
    for tid in ("t0", "t1"):
        attacks = {r["attack"]: r for r in final if r["trial_id"] == tid}
        assert set(QUICK) | {"clean", "worst_seen", "union_unseen", "worst_pgd"} <= set(attacks)
        assert all(r["epoch"] == -1 and r["n"] == 60 for r in attacks.values())
        clean = attacks["clean"]["accuracy"]
        seen = [attacks[a]["accuracy"] for a in QUICK if attacks[a]["threat"] == "seen"]
        unseen = [attacks[a]["accuracy"] for a in QUICK if attacks[a]["threat"] == "unseen"]
        assert all(a <= clean for a in seen + unseen)
        assert attacks["worst_seen"]["accuracy"] <= min(seen)
        assert attacks["union_unseen"]["accuracy"] <= min(unseen)
        assert attacks["pgd_l2"]["norm"] == "l2" and attacks["pgd_l2"]["eps"] == 1.0
        assert attacks["pgd_ce"]["eps"] == 0.2
    # the adversarially trained model is more robust than the standard one
    s = summary["trials"]
    assert s["t1"]["worst_seen"] > s["t0"]["worst_seen"]
    rows = {r["trial_id"]: r for r in store.read_rows(experiment / store.TRIALS)}
    assert rows["t0"]["final_worst_seen"] == s["t0"]["worst_seen"]
    assert rows["t0"]["masking_flags"] == ";".join(s["t0"]["flags"])
    assert rows["t1"]["hp_lr"] == 0.05 and rows["t1"]["checkpoint"]
    assert rows["t9"]["error"] == "diverged" and rows["t9"]["masking_flags"] is None
    # re-running replaces the final rows instead of adding to them
    trials.evaluate_experiment(experiment, trial_ids=["t0"], front=False, subset=60, attacks=["fgsm"], device="cpu")
    evals = store.read_rows(experiment / store.EVALS)
    t0_final = [r["attack"] for r in evals if r["stage"] == "final" and r["trial_id"] == "t0"]
    assert "fgsm" in t0_final and "pgd_ce" not in t0_final
    assert sum(r["stage"] == "final" and r["trial_id"] == "t1" for r in evals) == len(final) / 2
    assert "worst_seen" in summary["fronts"] and "t1" in summary["fronts"]["worst_seen"]


def test_candidates_are_the_front():
    rows = [{"trial_id": "a", "status": "completed", "checkpoint": "c", "clean_acc": 0.9, "robust_acc": 0.1},
            {"trial_id": "b", "status": "completed", "checkpoint": "c", "clean_acc": 0.8, "robust_acc": 0.5},
            {"trial_id": "c", "status": "completed", "checkpoint": "c", "clean_acc": 0.7, "robust_acc": 0.4},
            {"trial_id": "d", "status": "failed", "checkpoint": "c", "clean_acc": 0.95, "robust_acc": 0.9},
            {"trial_id": "e", "status": "completed", "checkpoint": None, "clean_acc": 0.99, "robust_acc": 0.9},
            {"trial_id": "f", "status": "completed", "checkpoint": "c", "clean_acc": float("nan"), "robust_acc": 0.9}]
    assert trials.candidates(rows) == ["a", "b"]


def test_bad_input(experiment, tmp_path):
    with pytest.raises(trials.EvalError):
        trials.evaluate_experiment(tmp_path / "nowhere")
    with pytest.raises(trials.EvalError):
        trials.evaluate_experiment(experiment, trial_ids=["nope"])
    with pytest.raises(trials.EvalError):
        trials.evaluate_experiment(experiment, attacks=["pgd_bogus"])
    with pytest.raises(trials.EvalError):
        trials.evaluate_experiment(experiment, subset=0)
    with pytest.raises(trials.EvalError):
        trials.evaluate_experiment(experiment, threads=0)


def test_proxy_gap_is_flagged(experiment):
    rows = store.read_rows(experiment / store.TRIALS)
    for r in rows:
        r.pop("schema_version")
        if r["trial_id"] == "t0":
            r["robust_acc"] = 1.0  # a proxy far above anything the suite will confirm
    store.write_trials(experiment, rows)
    s = trials.evaluate_experiment(experiment, trial_ids=["t0", "t1"], front=False, subset=40, attacks=["fgsm"])
    assert checks.FLAG_PROXY in s["trials"]["t0"]["flags"] and checks.FLAG_PROXY not in s["trials"]["t1"]["flags"]


def test_one_failed_trial_keeps_the_others(experiment, capsys):
    """A trial whose suite fails (here: its weights file is damaged) is reported in one line; the
    other trial's results are written and the CLI exits non-zero."""
    state = experiment / "t0" / "checkpoint_000003" / trial_io.STATE
    state.write_bytes(state.read_bytes()[:100])
    summary = trials.evaluate_experiment(experiment, trial_ids=["t0", "t1"], subset=40, attacks=["fgsm"],
                                         device="cpu")
    assert set(summary["failed"]) == {"t0"} and set(summary["trials"]) == {"t1"}
    final = {r["trial_id"] for r in store.read_rows(experiment / store.EVALS) if r["stage"] == "final"}
    assert final == {"t1"}
    rows = {r["trial_id"]: r for r in store.read_rows(experiment / store.TRIALS)}
    assert rows["t1"]["final_worst_seen"] == summary["trials"]["t1"]["worst_seen"]
    assert rows["t0"]["final_worst_seen"] is None or math.isnan(rows["t0"]["final_worst_seen"])
    code = main(["--experiment", str(experiment), "--trials", "t0", "t1", "--only-trials", "--subset", "40",
                 "--attacks", "fgsm", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "trial t0: final evaluation failed" in err and "Traceback" not in err


def test_failure_outcome_is_one_line():
    out = trials.TrialOutcome.failure("t3", RuntimeError("boom\nsecond line"), 1.5)
    assert out.report is None and out.rows == [] and out.error == "RuntimeError: boom"
    assert out.text == "trial t3: final evaluation failed: RuntimeError: boom" and out.seconds == 1.5
