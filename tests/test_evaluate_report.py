"""What the final evaluation reports (raysearch.evaluate.report): evals.parquet rows, the
printed table, the fronts recomputed per attack. Reports are built by hand: no model runs."""
from __future__ import annotations

import math

import pytest
import torch

from raysearch import schema
from raysearch.evaluate import fronts, report
from raysearch.evaluate.results import AttackResult, PredictorReport
from raysearch.schema import Stage, Threat

BASE = {"experiment": "exp", "trial_id": "t0", "method": "standard", "dataset": "digits"}


def _report(clean: list[bool], robust: list[bool], randomized: bool = False) -> PredictorReport:
    rep = PredictorReport(len(clean), torch.tensor(clean), randomized, 20 if randomized else 1,
                          draws_per_call=4 if randomized else 1, scoring_calls=20 if randomized else 1)
    rep.results.append(AttackResult("pgd_ce", "pgd", Threat.SEEN, "linf", 0.2, torch.tensor(robust),
                                    rep.eot, 1.25, iterations=50, restarts=1 if randomized else 5))
    rep.aggregates["worst_seen"] = ("worst_seen", Threat.SEEN, rep.results[0].accuracy)
    rep.flags.append("fgsm_beats_pgd")
    return rep


def test_report_rows_fit_the_schema():
    rows = report.report_rows(_report([True, True, False, True], [True, False, False, False]), BASE)
    assert [r["attack"] for r in rows] == ["clean", "pgd_ce", "worst_seen"]
    for r in rows:
        schema.check_row(r, "evals")
        assert r["stage"] == Stage.FINAL and r["epoch"] == schema.FINAL_EPOCH and r["n"] == 4
        assert {k: r[k] for k in BASE} == BASE
    clean, attack, worst = rows
    assert (clean["threat"], clean["norm"], clean["eps"], clean["accuracy"]) == ("clean", "none", 0.0, 0.75)
    assert (attack["threat"], attack["eps"], attack["accuracy"], attack["seconds"]) == ("seen", 0.2, 0.25, 1.25)
    assert worst["norm"] == "mixed" and math.isnan(worst["eps"]) and worst["accuracy"] == 0.25


def test_rows_say_how_they_were_measured():
    """An attack row carries its steps, restarts and queries; clean and aggregate rows 0 for
    all three; every row of a randomized predictor the rand protocol, of a deterministic one
    the standard protocol."""
    for randomized, protocol in ((False, "standard"), (True, "rand")):
        rep = _report([True, True], [True, False], randomized=randomized)
        rep.results.append(AttackResult("square", "square", Threat.SEEN, "linf", 0.2, torch.tensor([1.0, 0.0]),
                                        rep.eot, 2.0, gradient=False, queries=1000))
        rows = {r["attack"]: r for r in report.report_rows(rep, BASE)}
        spent = {name: (r["iterations"], r["restarts"], r["queries"]) for name, r in rows.items()}
        assert spent["pgd_ce"] == (50, 1 if randomized else 5, 0) and spent["square"] == (0, 1, 1000)
        assert spent["clean"] == spent["worst_seen"] == (0, 0, 0)
        assert {r["protocol"] for r in rows.values()} == {protocol}


def test_randomized_report_rows_and_table():
    """Per-call accuracies are the rows' accuracies; ``clean_per_draw`` equals the per-call
    clean accuracy; the vote of the calls is in labelled ``*_ensemble`` rows only."""
    rep = _report([True, False], [False, False], randomized=True)
    rep.ensemble = {"clean_ensemble": 1.0, "worst_seen_ensemble": 0.5}
    listed = report.report_rows(rep, BASE)
    rows = {r["attack"]: r for r in listed}
    assert [r["attack"] for r in listed] == ["clean", "clean_per_draw", "clean_ensemble", "pgd_ce", "worst_seen",
                                             "worst_seen_ensemble"]
    assert rows["clean"]["eot_samples"] == 20 and rows["clean_per_draw"]["eot_samples"] == 4
    assert rows["clean_per_draw"]["accuracy"] == 0.5 == rows["clean"]["accuracy"]
    assert rows["clean_ensemble"]["accuracy"] == 1.0 and rows["clean_ensemble"]["threat"] == Threat.CLEAN
    assert rows["worst_seen"]["accuracy"] == 0.0 and rows["worst_seen_ensemble"]["accuracy"] == 0.5
    assert (rows["worst_seen_ensemble"]["threat"], rows["worst_seen_ensemble"]["norm"]) == (Threat.SEEN, "mixed")
    for r in listed:
        schema.check_row(r, "evals")
    text = report.format_table("t0", "atop", rep)
    assert text.splitlines()[0] == "trial t0 (atop): n=2, randomized, EOT 20"
    assert "over 20 fresh calls per image" in text and text.splitlines()[-1] == "  masking flags: fgsm_beats_pgd"
    assert "  clean_ensemble             clean              1.000" in text.splitlines()
    assert "  worst_seen_ensemble        seen               0.500" in text.splitlines()
    assert "  pgd_ce                     seen         0.2   0.000     1.2" in text.splitlines()
    # no front is drawn on the ensemble, and a deterministic report has none of these rows
    assert "worst_seen_ensemble" not in _fronts({"t0": rep})[0]
    assert rep.accuracy("worst_seen_ensemble") == 0.5
    plain = {r["attack"] for r in report.report_rows(_report([True, False], [False, False]), BASE)}
    assert not {"clean_per_draw", "clean_ensemble", "worst_seen_ensemble"} & plain


def test_fractional_per_image_scores_are_averaged_as_they_are():
    """A randomized predictor's per-image scores are fractions of calls; the rows carry their mean."""
    rep = PredictorReport(3, torch.tensor([1.0, 0.5, 0.25]), True, 20, scoring_calls=20)
    rep.results.append(AttackResult("pgd_ce", "pgd", Threat.SEEN, "linf", 0.2, torch.tensor([0.5, 0.5, 0.05]),
                                    rep.eot, 1.0, scoring_calls=20))
    rows = {r["attack"]: r for r in report.report_rows(rep, BASE)}
    assert rows["clean"]["accuracy"] == pytest.approx(1.75 / 3)
    assert rows["pgd_ce"]["accuracy"] == pytest.approx(1.05 / 3)


def _evaluated(reports: dict[str, PredictorReport]):
    """The reports as the final rows they are stored as, read back for the fronts."""
    rows = [r for tid, rep in reports.items() for r in report.report_rows(rep, {**BASE, "trial_id": tid})]
    return fronts.evaluated(rows)


def _fronts(reports: dict[str, PredictorReport]):
    return fronts.fronts(_evaluated(reports))


def test_fronts_per_attack():
    reports = {"a": _report([True, True], [True, False]), "b": _report([True, False], [True, False]),
               "c": _report([True, True], [False, False])}
    on_front, hv = _fronts(reports)
    assert set(on_front) == {"pgd_ce", "worst_seen"}
    assert on_front["pgd_ce"] == ["a"] and hv["pgd_ce"] == pytest.approx(0.5)
    text = fronts.format_fronts(on_front, hv, _evaluated(reports))
    assert text.splitlines()[0].startswith("front (clean vs accuracy under each attack)")
    assert "  pgd_ce                     hv 0.500  a (1.000/0.500)" in text


def _with_curve(rep: PredictorReport, worst: dict[float, list[bool]]) -> PredictorReport:
    rep.eps_eval = 0.2
    for radius, robust in worst.items():
        rep.curve_results[radius] = [AttackResult("pgd_ce", "pgd", Threat.SEEN, "linf", radius, torch.tensor(robust),
                                                  rep.eot, 0.5)]
        rep.curve[radius] = rep.curve_results[radius][0].accuracy
    return rep


def test_curve_rows_are_named_by_radius_and_leave_the_eps_eval_rows_as_they_were():
    plain = report.report_rows(_report([True, True, False, True], [True, False, False, False]), BASE)
    rep = _with_curve(_report([True, True, False, True], [True, False, False, False]),
                      {0.1: [True, True, False, False], 0.3: [False, False, False, False]})
    rows = report.report_rows(rep, BASE)
    assert rows[:len(plain)] == plain
    assert [(r["attack"], r["eps"], r["accuracy"]) for r in rows[len(plain):]] == [
        ("pgd_ce@0.1", 0.1, 0.5), ("worst_seen@0.1", 0.1, 0.5), ("pgd_ce@0.3", 0.3, 0.0), ("worst_seen@0.3", 0.3, 0.0)]
    for r in rows[len(plain):]:
        schema.check_row(r, "evals")
        assert r["stage"] == Stage.FINAL and r["epoch"] == schema.FINAL_EPOCH and r["threat"] == Threat.SEEN
    assert {r["norm"] for r in rows if r["attack"].startswith("worst_seen@")} == {"mixed"}
    # (trial, stage, epoch, attack) stays a unique key, and the plain name is the ε_eval result
    assert len({r["attack"] for r in rows}) == len(rows)
    assert [r["accuracy"] for r in rows if r["attack"] == "worst_seen"] == [0.25]
    assert rep.accuracy("worst_seen@0.1") == 0.5 and rep.accuracy("pgd_ce@0.3") == 0.0
    assert math.isnan(rep.accuracy("worst_seen@0.2"))


def test_curve_table_follows_the_eps_eval_table():
    plain = report.format_table("t0", "standard", _report([True, True], [True, False]))
    rep = _with_curve(_report([True, True], [True, False]), {0.3: [False, False], 0.1: [True, True]})
    text = report.format_table("t0", "standard", rep)
    assert text.startswith(plain + "\n")
    assert text[len(plain) + 1:].splitlines() == [
        "  robustness curve (worst case over seen attacks):",
        "         eps     acc",
        "         0.1   1.000",
        "         0.2   0.500  (eps_eval)",
        "         0.3   0.000"]
    assert rep.robustness_curve() == {0.1: 1.0, 0.2: 0.5, 0.3: 0.0}


def test_fronts_add_worst_seen_per_radius_after_the_others():
    plain = {"a": _report([True, True], [True, False]), "b": _report([True, False], [True, False])}
    reports = {"a": _with_curve(_report([True, True], [True, False]), {0.3: [True, False]}),
               "b": _with_curve(_report([True, False], [True, False]), {0.3: [True, False]})}
    on_front, hv = _fronts(reports)
    assert list(on_front) == ["pgd_ce", "worst_seen", "worst_seen@0.3"]
    assert on_front["worst_seen@0.3"] == ["a"] and hv["worst_seen@0.3"] == pytest.approx(0.5)
    plain_front, plain_hv = _fronts(plain)
    assert {k: on_front[k] for k in plain_front} == plain_front and {k: hv[k] for k in plain_hv} == plain_hv
