"""Which trials the final evaluation attacks (raysearch.evaluate.candidates): the proxy front, the
band near it, all, or the K best by non-dominated sorting, on trials whose answers are worked
out by hand. No model runs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch import schema, store
from raysearch.evaluate import candidates
from raysearch.schema import Status

# (clean_acc, robust_acc) of completed trials with a checkpoint, in trials.parquet order.
# Front: A, M, B. With the band 0.03 wide:
#   C inside (A beats it by 0.02 in both); E on the edge (B beats it by exactly 0.03 in both,
#   0.030000000000000027 in floating point); D outside (A beats it by 0.05 in both); F outside;
#   H inside: only A has a higher clean accuracy, by 0.01, so no front point beats it by more than
#   0.03 in both, however low its robust accuracy (the band's rule at the ends of the front).
POINTS = {"A": (0.90, 0.50), "M": (0.86, 0.56), "B": (0.80, 0.61), "C": (0.88, 0.48), "E": (0.77, 0.58),
          "D": (0.85, 0.45), "F": (0.70, 0.40), "H": (0.89, 0.10)}


def _row(tid: str, clean: float, robust: float, status: str = Status.COMPLETED, checkpoint: str | None = "ckpt"):
    row = schema.trial_row(experiment="exp", trial_id=tid, method="pgd_at", dataset="digits", arch="small_cnn",
                           eps_eval=0.2, num_workers=1, started_at=0.0, config={"lr": 0.05})
    row.update(status=status, clean_acc=clean, robust_acc=robust, checkpoint=checkpoint, epochs=8)
    return row


@pytest.fixture()
def rows(tmp_path):
    """The trials above plus three that are never candidates, as trials.parquet holds them."""
    written = [_row(t, c, r) for t, (c, r) in POINTS.items()]
    written += [_row("failed", 0.99, 0.99, status=Status.FAILED), _row("no_ckpt", 0.99, 0.99, checkpoint=None),
                _row("nan", math.nan, 0.99)]
    store.write_trials(tmp_path, written)
    return store.read_rows(tmp_path / store.TRIALS)


def test_candidates_are_the_front():
    rows = [{"trial_id": "a", "status": "completed", "checkpoint": "c", "clean_acc": 0.9, "robust_acc": 0.1},
            {"trial_id": "b", "status": "completed", "checkpoint": "c", "clean_acc": 0.8, "robust_acc": 0.5},
            {"trial_id": "c", "status": "completed", "checkpoint": "c", "clean_acc": 0.7, "robust_acc": 0.4},
            {"trial_id": "d", "status": "failed", "checkpoint": "c", "clean_acc": 0.95, "robust_acc": 0.9},
            {"trial_id": "e", "status": "completed", "checkpoint": None, "clean_acc": 0.99, "robust_acc": 0.9},
            {"trial_id": "f", "status": "completed", "checkpoint": "c", "clean_acc": float("nan"), "robust_acc": 0.9}]
    assert candidates.front(rows) == ["a", "b"]
    assert candidates.select(rows, "front").ids == ("a", "b")


def test_front(rows):
    chosen = candidates.select(rows, "front")
    assert chosen.ids == chosen.front == ("A", "M", "B")
    assert chosen.describe() == "front 3"


def test_band_inside_on_the_edge_and_outside(rows):
    chosen = candidates.select(rows, "band")
    assert chosen.ids == ("A", "M", "B", "C", "E", "H")  # the front first, then the band in trials.parquet order
    assert chosen.describe() == ("front 3, band 3 (trials within 0.03 of the proxy front in both clean and "
                                 "robust accuracy)")
    front = [POINTS[t] for t in "AMB"]
    # just past the edge: B beats it by 0.0301 in both
    assert candidates.in_band([(0.7699, 0.5799), (0.77, 0.58), (0.88, 0.48), (0.85, 0.45)], front).tolist() == [
        False, True, True, False]
    # far in one objective but within the width in the other of every front point that is better in both
    assert candidates.in_band([(0.10, 0.60)], front).tolist() == [True]
    assert candidates.in_band(front, front).all()
    assert candidates.BAND_WIDTH == 0.03


def test_the_band_trials_a_rule_leaves_out(rows):
    """What the search's last lines offer to evaluate after a front-only evaluation: the band's
    trials outside the front; none after the band or all."""
    assert candidates.band_left_out(rows, candidates.select(rows, "front")) == ["C", "E", "H"]
    assert candidates.band_left_out(rows, candidates.select(rows, "band")) == []
    assert candidates.band_left_out(rows, candidates.select(rows, "all")) == []
    assert candidates.band_left_out(rows, candidates.select(rows, "4")) == [
        t for t in ("C", "E", "H") if t not in candidates.select(rows, "4").ids]


def test_all(rows):
    chosen = candidates.select(rows, "all")
    assert chosen.ids == ("A", "M", "B", "C", "E", "D", "F", "H")
    assert chosen.describe() == "front 3, all 5 other completed trials"


def test_k_best_by_non_dominated_sorting(rows):
    """Fronts in turn: {A, M, B}, then {C, E, H}, then D, then F. Within a front the ends come
    first (infinite crowding distance), ties by the sum of both accuracies (B 1.41 before A
    1.40; E 1.35 before H 0.99), then the middle."""
    every = candidates.select(rows, "20")
    assert every.ids == ("B", "A", "M", "E", "H", "C", "D", "F")
    assert every.describe() == ("the 20 best by non-dominated sorting of the proxy accuracies (only 8 completed): "
                                "front 3 of 3, next fronts 5")
    chosen = candidates.select(rows, "4")
    assert chosen.ids == ("B", "A", "M", "E") and chosen.front == ("A", "M", "B")
    assert chosen.describe() == ("the 4 best by non-dominated sorting of the proxy accuracies: front 3 of 3, "
                                 "next fronts 1")
    assert candidates.select(rows, "2").ids == ("B", "A")  # a cut front keeps its ends
    assert candidates.select(rows, "2").describe().endswith("front 2 of 3, next fronts 0")


def test_crowding_distance():
    # the middle point of three: its neighbours span the whole range of both objectives
    assert candidates.crowding([(0.9, 0.5), (0.86, 0.56), (0.8, 0.61)]).tolist() == [math.inf, 2.0, math.inf]
    assert candidates.crowding([(0.9, 0.5), (0.8, 0.6)]).tolist() == [math.inf, math.inf]
    assert np.isinf(candidates.crowding([(0.5, 0.5)])).all()
    assert candidates.ranked([]) == []


def test_no_candidates():
    assert candidates.select([], "band").ids == ()
    assert candidates.select([_row("x", 0.9, 0.9, status=Status.FAILED)], "3").ids == ()


@pytest.mark.parametrize("text,rule", [("front", "front"), ("band", "band"), ("all", "all"), (" Band ", "band"),
                                       ("5", "5"), ("05", "5"), ("1", "1")])
def test_parse_rule(text, rule):
    assert candidates.parse_rule(text) == rule


@pytest.mark.parametrize("text", ["0", "-1", "2.5", "best", "", "front,band"])
def test_a_bad_rule_is_one_line(text):
    with pytest.raises(candidates.CandidatesError, match="--final-candidates must be front, band, all or a whole "
                                                         "number K >= 1") as exc:
        candidates.parse_rule(text)
    assert "\n" not in str(exc.value)
