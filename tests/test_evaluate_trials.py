"""The experiment level of the final evaluation (raysearch.evaluate.trials): candidates,
validation of a request, results written per trial, one failed trial keeping the others."""
from __future__ import annotations

import math

import pytest

from raysearch import store, trial_io
from raysearch.evaluate import checks, trials
from raysearch.evaluate.__main__ import main
from tests.evaluate_support import PGD, QUICK


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


def test_robustness_curve_rows_per_radius_and_the_eps_eval_results_unchanged(experiment):
    """``eps_list`` adds '<attack>@<radius>' rows (eps: the radius) for the seen attacks and
    their worst case; the ε_eval rows, trials.parquet's final_* columns and the flags are those
    of an evaluation without it; re-running without it removes the curve rows."""
    suite_ = ["fgsm", PGD, "jpeg", "gaussian_noise_s3"]

    def comparable(v):  # NaN (no budget, no final result) as None, so that it compares equal
        return None if isinstance(v, float) and math.isnan(v) else v

    def final_rows():
        return {(r["trial_id"], r["attack"]): {k: comparable(v) for k, v in r.items() if k != "seconds"}
                for r in store.read_rows(experiment / store.EVALS) if r["stage"] == "final"}

    def final_columns():
        return {r["trial_id"]: tuple(comparable(r[k]) for k in ("final_clean_acc", "final_worst_seen",
                                                                "final_union_unseen", "masking_flags"))
                for r in store.read_rows(experiment / store.TRIALS)}

    plain = trials.evaluate_experiment(experiment, trial_ids=["t0", "t1"], subset=60, attacks=suite_, device="cpu")
    plain_rows, plain_columns = final_rows(), final_columns()
    curved = trials.evaluate_experiment(experiment, trial_ids=["t0", "t1"], subset=60, attacks=suite_,
                                        device="cpu", eps_list=[0.3, 0.1, 0.2])
    rows, columns = final_rows(), final_columns()
    assert columns == plain_columns
    assert {k: v for k, v in rows.items() if "@" not in k[1]} == plain_rows
    assert {k: (v["eps"], v["threat"]) for k, v in rows.items() if "@" in k[1]} == {
        (tid, f"{attack}@{radius:g}"): (radius, "seen")
        for tid in ("t0", "t1") for radius in (0.1, 0.3) for attack in ("fgsm", "pgd_ce", "worst_seen")}
    for tid in ("t0", "t1"):
        summary = curved["trials"][tid]
        assert {k: summary[k] for k in ("clean_acc", "worst_seen", "union_unseen", "flags")} == \
            {k: plain["trials"][tid][k] for k in ("clean_acc", "worst_seen", "union_unseen", "flags")}
        curve = summary["curve"]
        assert list(curve) == [0.1, 0.2, 0.3] and curve[0.2] == rows[(tid, "worst_seen")]["accuracy"]
        assert curve[0.1] == rows[(tid, "worst_seen@0.1")]["accuracy"]
        assert curve[0.1] >= curve[0.2] >= curve[0.3]
    assert curved["fronts"]["worst_seen"] == plain["fronts"]["worst_seen"] and "worst_seen@0.3" in curved["fronts"]
    assert "robustness curve" in curved["report"] and "robustness curve" not in plain["report"]
    trials.evaluate_experiment(experiment, trial_ids=["t0"], front=False, subset=60, attacks=suite_, device="cpu")
    assert not [k for k in final_rows() if k[0] == "t0" and "@" in k[1]]
    with pytest.raises(trials.EvalError, match="--eps-list"):
        trials.evaluate_experiment(experiment, trial_ids=["t0"], eps_list=[0.1, 1.5])
