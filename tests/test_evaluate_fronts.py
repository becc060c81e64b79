"""The fronts under the final attacks over everything evaluated (raysearch.evaluate.fronts), from
evals.parquet rows built by hand: which names get a front, in which order, over which trials,
and the printed text. No model runs."""
from __future__ import annotations

import math

import pytest

from raysearch import schema, store
from raysearch.evaluate import fronts
from raysearch.schema import Stage, Threat


def _row(tid: str, attack: str, accuracy: float, threat: str = Threat.SEEN, eps: float = 0.2,
         stage: str = Stage.FINAL) -> dict:
    return schema.eval_row(experiment="exp", trial_id=tid, method="pgd_at", dataset="digits", stage=stage,
                           epoch=schema.FINAL_EPOCH if stage == Stage.FINAL else 3, attack=attack, family="pgd",
                           threat=threat, norm="linf", eps=eps, accuracy=accuracy, n=2, eot_samples=1, scoring_calls=1,
                           queries=0, restarts=1, iterations=50, protocol="standard", seconds=1.0)


def _trial(tid: str, clean: float, robust: float) -> list[dict]:
    return [_row(tid, "clean", clean, Threat.CLEAN, 0.0), _row(tid, "pgd_ce", robust),
            _row(tid, "worst_seen", robust, eps=math.nan)]


@pytest.fixture()
def rows(tmp_path):
    """Three evaluated trials as evals.parquet holds them: a (1, .5) with a robustness curve at
    0.3 and 0.1 (stored in that order) and a randomized predictor's extra rows, b (.5, .5),
    c (1, 0), plus a per-epoch row of a trial never evaluated."""
    written = _trial("a", 1.0, 0.5) + [
        _row("a", "clean_per_draw", 1.0, Threat.CLEAN, 0.0), _row("a", "clean_ensemble", 1.0, Threat.CLEAN, 0.0),
        _row("a", "worst_seen_ensemble", 1.0, eps=math.nan),
        _row("a", "pgd_ce@0.3", 0.0, eps=0.3), _row("a", "worst_seen@0.3", 0.0, eps=0.3),
        _row("a", "pgd_ce@0.1", 1.0, eps=0.1), _row("a", "worst_seen@0.1", 1.0, eps=0.1)]
    written += _trial("b", 0.5, 0.5) + _trial("c", 1.0, 0.0)
    written.append(_row("d", "pgd20_linf", 0.9, stage=Stage.TRIAL))
    store.write_evals(tmp_path, written)
    return store.read_rows(tmp_path / store.EVALS)


def test_every_evaluated_trial_in_order(rows):
    assert list(fronts.evaluated(rows)) == ["a", "b", "c"]
    assert list(fronts.evaluated(rows, first=["c", "x"])) == ["c", "a", "b"]
    a = fronts.evaluated(rows)["a"]
    assert a.clean == 1.0 and list(a.plain) == ["pgd_ce", "worst_seen"]
    assert a.curve == {"worst_seen@0.1": 1.0, "worst_seen@0.3": 0.0}  # by radius, whatever the stored order
    assert math.isnan(a.accuracy("fgsm"))


def test_fronts_per_attack_then_per_radius_and_none_for_ensembles(rows):
    trials = fronts.evaluated(rows)
    on_front, hv = fronts.fronts(trials)
    assert list(on_front) == ["pgd_ce", "worst_seen", "worst_seen@0.1", "worst_seen@0.3"]
    assert on_front["pgd_ce"] == ["a"] and hv["pgd_ce"] == pytest.approx(0.5)
    assert on_front["worst_seen@0.1"] == ["a"] and hv["worst_seen@0.1"] == pytest.approx(1.0)
    text = fronts.format_fronts(on_front, hv, trials)
    assert text.splitlines() == [
        "front (clean vs accuracy under each attack), recomputed on the test subset:",
        "  pgd_ce                     hv 0.500  a (1.000/0.500)",
        "  worst_seen                 hv 0.500  a (1.000/0.500)",
        "  worst_seen@0.1             hv 1.000  a (1.000/1.000)",
        "  worst_seen@0.3             hv 0.000  a (1.000/0.000)"]


def test_a_trial_without_an_attack_has_no_point_on_its_front(rows, tmp_path):
    store.write_evals(tmp_path, rows + [_row("e", "clean", 0.25, Threat.CLEAN, 0.0), _row("e", "fgsm", 0.25)])
    on_front, hv = fronts.fronts(fronts.evaluated(store.read_rows(tmp_path / store.EVALS)))
    assert on_front["fgsm"] == ["e"] and hv["fgsm"] == pytest.approx(0.0625)
    assert on_front["pgd_ce"] == ["a"]
    assert fronts.fronts({}) == ({}, {})
