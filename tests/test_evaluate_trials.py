"""The experiment level of the final evaluation (raysearch.evaluate.trials): the candidates of
each rule, validation of a request, results written per trial, one failed trial keeping the
others, fronts over every trial evaluated so far."""
from __future__ import annotations

import json
import math

import pytest

from raysearch import schema, store, trial_io
from raysearch.evaluate import checks, trials
from raysearch.schema import Stage, Status, Threat
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
    # every check that ran, with its count and limit, beside the flags that fired
    stored = json.loads(rows["t0"]["masking_checks"])
    assert stored == s["t0"]["checks"] and rows["t9"]["masking_checks"] is None
    assert {checks.FLAG_UNBOUNDED, checks.FLAG_ZERO_GRADIENT, checks.FLAG_SATURATED} <= set(stored)
    assert all(list(c) == ["count", "n", "limit", "fired", "what"] and c["n"] == 60 for c in stored.values())
    assert [name for name, c in stored.items() if c["fired"]] == [f for f in s["t0"]["flags"] if f in stored]
    # evals rows say how each number was measured
    t1 = {r["attack"]: r for r in final if r["trial_id"] == "t1"}
    assert (t1["pgd_ce"]["iterations"], t1["pgd_ce"]["restarts"], t1["pgd_ce"]["queries"]) == (50, 5, 0)
    assert (t1["clean"]["iterations"], t1["clean"]["restarts"], t1["gaussian_noise_s3"]["iterations"]) == (0, 0, 0)
    assert {r["protocol"] for r in final} == {"standard"}
    # re-running replaces the final rows instead of adding to them
    trials.evaluate_experiment(experiment, trial_ids=["t0"], front=False, subset=60, attacks=["fgsm"], device="cpu")
    evals = store.read_rows(experiment / store.EVALS)
    t0_final = [r["attack"] for r in evals if r["stage"] == "final" and r["trial_id"] == "t0"]
    assert "fgsm" in t0_final and "pgd_ce" not in t0_final
    assert sum(r["stage"] == "final" and r["trial_id"] == "t1" for r in evals) == len(final) / 2
    assert "worst_seen" in summary["fronts"] and "t1" in summary["fronts"]["worst_seen"]


# Proxy accuracies set by hand: t0 and t1 (the fixture's trained models) are the front; s_in is
# inside the band (t0 beats it by 0.02 in both), s_edge on its edge (t1 beats it by exactly 0.03 in
# both), s_out outside (t0 beats it by 0.05 in both). The synthetic trials share t1's checkpoint.
PROXY = {"t0": (0.90, 0.50), "t1": (0.80, 0.61), "s_in": (0.88, 0.48), "s_edge": (0.77, 0.58),
         "s_out": (0.85, 0.45)}


def _with_synthetic_trials(experiment):
    rows = store.read_rows(experiment / store.TRIALS)
    checkpoint = next(r["checkpoint"] for r in rows if r["trial_id"] == "t1")
    for tid in ("s_in", "s_edge", "s_out"):
        row = schema.trial_row(experiment="exp", trial_id=tid, method="pgd_at", dataset="digits", arch="small_cnn",
                               eps_eval=0.2, num_workers=1, started_at=0.0, config={"lr": 0.05})
        row.update(status=Status.COMPLETED, error="", epochs=4, checkpoint=checkpoint)
        rows.append(row)
    for r in rows:
        if r["trial_id"] in PROXY:
            r["clean_acc"], r["robust_acc"] = PROXY[r["trial_id"]]
    store.write_trials(experiment, rows)
    return experiment


def _planned(experiment, rule=None, front=True, trial_ids=()):
    jobs, _, selection = trials.plan(experiment, list(trial_ids), None, None, ["fgsm"], 0, None, front, 500, "cpu",
                                     None, (), rule)
    return [job.trial_id for job in jobs], selection


def test_candidates_of_each_rule(experiment):
    _with_synthetic_trials(experiment)
    assert _planned(experiment, "front")[0] == ["t0", "t1"]
    ids, selection = _planned(experiment)  # nothing recorded: band
    assert ids == ["t0", "t1", "s_in", "s_edge"] and selection.rule == "band" and selection.front == ("t0", "t1")
    assert _planned(experiment, "all")[0] == ["t0", "t1", "s_in", "s_edge", "s_out"]
    # ends of the front first (t1's 1.41 before t0's 1.40), then the next front
    assert _planned(experiment, "3")[0] == ["t1", "t0", "s_in"]
    assert _planned(experiment, "front", trial_ids=["s_out", "t0"])[0] == ["t0", "t1", "s_out"]
    assert _planned(experiment, "band", front=False, trial_ids=["s_out"]) == (["s_out"], None)


def test_the_recorded_rule_is_the_default(experiment):
    _with_synthetic_trials(experiment)
    store.write_json(experiment / store.EXPERIMENT, {"config": {"final_candidates": "front"}})
    assert _planned(experiment)[0] == ["t0", "t1"]
    assert _planned(experiment, "all")[0] == ["t0", "t1", "s_in", "s_edge", "s_out"]
    store.write_json(experiment / store.EXPERIMENT, {"config": {"final_candidates": "best"}})
    with pytest.raises(trials.EvalError, match="--final-candidates must be front, band, all or a whole number K"):
        _planned(experiment)
    with pytest.raises(trials.EvalError, match="--final-candidates"):
        trials.evaluate_experiment(experiment, final_candidates="0")


def test_the_band_is_evaluated_and_said_why(experiment):
    _with_synthetic_trials(experiment)
    messages = []
    summary = trials.evaluate_experiment(experiment, subset=40, attacks=["fgsm"], device="cpu",
                                         progress=messages.append)
    assert list(summary["trials"]) == ["t0", "t1", "s_in", "s_edge"]
    why = ("4 candidate(s): front 2, band 2 (trials within 0.03 of the proxy front in both clean and robust "
           "accuracy)")
    assert summary["candidates"] == why and messages[0] == why
    final = {r["trial_id"] for r in store.read_rows(experiment / store.EVALS) if r["stage"] == "final"}
    assert final == {"t0", "t1", "s_in", "s_edge"}


def test_fronts_cover_an_earlier_evaluation(experiment):
    """Fronts under the final attacks are over every trial with final rows in evals.parquet: t0's
    rows from an earlier evaluation (written by hand, better than anything in both) and t1's from
    this one."""
    earlier = [schema.eval_row(experiment="exp", trial_id="t0", method="standard", dataset="digits",
                               stage=Stage.FINAL, epoch=schema.FINAL_EPOCH, attack=attack, family=attack,
                               threat=threat, norm="linf", eps=0.2, accuracy=1.0, n=40, eot_samples=1, scoring_calls=1,
                               queries=0, restarts=1, iterations=1, protocol="standard", seconds=1.0)
               for attack, threat in (("clean", Threat.CLEAN), ("fgsm", Threat.SEEN), ("worst_seen", Threat.SEEN))]
    store.write_evals(experiment, store.read_rows(experiment / store.EVALS) + earlier)
    summary = trials.evaluate_experiment(experiment, trial_ids=["t1"], front=False, subset=40, attacks=["fgsm"],
                                         device="cpu")
    assert list(summary["trials"]) == ["t1"] and summary["candidates"] == ""
    assert summary["fronts"]["fgsm"] == summary["fronts"]["worst_seen"] == ["t0"]
    assert summary["hypervolume"]["fgsm"] == pytest.approx(1.0)
    assert "  fgsm                       hv 1.000  t0 (1.000/1.000)" in summary["report"].splitlines()
    rows = [r for r in store.read_rows(experiment / store.EVALS) if r["stage"] == "final"]
    assert {r["trial_id"] for r in rows} == {"t0", "t1"}
    assert [r["accuracy"] for r in rows if r["trial_id"] == "t0"] == [1.0, 1.0, 1.0]
    # evaluating t0 again replaces its earlier rows: the fronts are then over both trials' new results
    again = trials.evaluate_experiment(experiment, trial_ids=["t0"], front=False, subset=40, attacks=["fgsm"],
                                       device="cpu")
    both = trials.evaluate_experiment(experiment, trial_ids=["t0", "t1"], front=False, subset=40, attacks=["fgsm"],
                                      device="cpu")
    assert {k: set(v) for k, v in again["fronts"].items()} == {k: set(v) for k, v in both["fronts"].items()}
    assert again["hypervolume"] == pytest.approx(both["hypervolume"])


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
