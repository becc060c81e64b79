"""The front a search prints when it ends (raysearch.search.summary), from results files."""
from __future__ import annotations

import math

from raysearch import store
from raysearch.schema import Status
from raysearch.search.summary import _fmt, front_table, report


def _row(trial_id, clean, robust, status=Status.COMPLETED, **hp):
    return {"trial_id": trial_id, "status": status, "clean_acc": clean, "robust_acc": robust, "error": None,
            **{f"hp_{k}": v for k, v in hp.items()}}


ROWS = [_row("a", 0.9, 0.1, lr=0.1, steps=3), _row("b", 0.8, 0.4, lr=0.01, steps=5),
        _row("c", 0.7, 0.3, lr=0.05, steps=5),  # dominated by b
        _row("d", math.nan, math.nan, Status.FAILED, lr=1e6, steps=5) | {"error": "diverged: loss"},
        _row("e", 0.5, 0.2, Status.RUNNING)]


def test_the_front_is_the_completed_non_dominated_trials_most_robust_first():
    front, hv = front_table(ROWS)
    assert [r["trial_id"] for r in front] == ["b", "a"]
    # union of the rectangles [0, clean] × [0, robust] of a, b (c lies inside b's)
    assert math.isclose(hv, 0.8 * 0.4 + (0.9 - 0.8) * 0.1)


def test_no_completed_trial_is_an_empty_front():
    assert front_table([_row("x", 0.5, 0.2, Status.FAILED)]) == ([], 0.0)
    assert front_table([]) == ([], 0.0)


def test_hyperparameters_print_short():
    assert _fmt(0.000123456) == "0.0001235" and _fmt(5) == "5" and _fmt(None) == "" and _fmt("sgd") == "sgd"


def test_report_prints_the_front_its_hypervolume_and_each_failure(tmp_path, capsys):
    store.write_trials(tmp_path, ROWS)
    store.write_json(tmp_path / store.EXPERIMENT, {"config": {"eps_eval": 0.2, "eval_steps": 20},
                                                   "search_space": {"lr": {}, "steps": {}}})
    report(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("Pareto front: clean accuracy vs proxy robust accuracy (per image the worst of L∞ "
                        "PGD-margin, PGD-CE and, on deterministic predictors, APGD-T, 20 steps each) at ε=0.2 "
                        "(validation split, per-epoch proxy), 2 of 3 completed trials")
    assert lines[2].split() == ["trial_id", "clean_acc", "robust_acc", "lr", "steps"]
    assert lines[3].split() == ["b", "0.800", "0.400", "0.01", "5"]
    assert lines[4].split() == ["a", "0.900", "0.100", "0.1", "3"]
    assert lines[5] == "hypervolume (reference point clean=0, robust=0): 0.3300"
    assert lines[6:] == ["  failed trial d: diverged: loss"]


def test_report_of_a_search_without_completed_trials(tmp_path, capsys):
    store.write_trials(tmp_path, [_row("d", math.nan, math.nan, Status.FAILED) | {"error": "boom"}])
    store.write_json(tmp_path / store.EXPERIMENT, {"config": {"eps_eval": 8 / 255, "eval_steps": 10}})
    report(tmp_path)
    out = capsys.readouterr().out
    assert "ε=0.03137" in out and "0 of 0 completed trials" in out and "  no completed trial" in out
    assert "hypervolume (reference point clean=0, robust=0): 0.0000" in out and "failed trial d: boom" in out
