"""MO-ASHA (raysearch.search.schedulers.moasha, ranking): promotion decisions on a hand-computed
example, with no Ray run: the scheduler's decision function is fed reports as Ray Tune would."""
from __future__ import annotations

import math

import pytest
from ray.tune.schedulers import TrialScheduler

from raysearch.config import ExperimentConfig
from raysearch.search.schedulers import make_scheduler
from raysearch.search.schedulers.moasha import MOASHA, promotes, rung_epochs
from raysearch.search.schedulers.ranking import crowding_order, epsilon_net, fronts, moasha_order

GO, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
# (clean, robust): A, B, C, E on the front, D behind B, F behind everything
A, B, C, D, E, F = (0.9, 0.1), (0.5, 0.5), (0.1, 0.9), (0.4, 0.4), (0.85, 0.12), (0.2, 0.2)


def report(epoch: int, values: tuple[float, float], proxy_epoch: int | None = None) -> dict:
    return {"epoch": epoch, "clean_acc": values[0], "robust_acc": values[1],
            "proxy_epoch": epoch if proxy_epoch is None else proxy_epoch}


def test_fronts_then_the_epsilon_net_inside_each():
    points = [A, B, C, D, E, F]
    assert fronts(points) == [[0, 1, 2, 4], [3], [5]]
    # the ε-net starts at the most accurate (A); C is farthest from A (1.13); then B (0.57 from
    # both A and C) before E (0.05 from A)
    assert epsilon_net(points, [0, 1, 2, 4]) == [0, 2, 1, 4]
    assert moasha_order(points) == [0, 2, 1, 4, 3, 5]
    # crowding inside the front: the two ends first, then the most isolated
    assert crowding_order(points)[:2] == [0, 2] and crowding_order(points)[-2:] == [3, 5]


def test_rungs_sit_at_grace_times_factor_powers_below_the_last_epoch():
    assert rung_epochs(1, 3, 9) == [1, 3]
    assert rung_epochs(1, 3, 10) == [1, 3, 9]
    assert rung_epochs(2, 2.5, 20) == [2, 5, 13]  # 6.25 and 15.6 epochs reached at 7 and 16
    assert make_scheduler(ExperimentConfig(method="standard", scheduler="moasha", max_epochs=9)).rungs == {1: {}, 3: {}}


def test_promotion_keeps_the_top_ceil_n_over_factor_of_the_rung():
    assert promotes([], D, 3)  # the first at a rung always goes on
    assert promotes([D], B, 2) and not promotes([B], D, 2)
    assert promotes([D, B, A], C, 2)  # 2nd of 4 in MO-ASHA order (A, C, B, D): top 2 go on
    assert not promotes([D, B, A, C], E, 2)  # 4th of 5: top 3 go on
    assert not promotes([A], A, 2)  # a tie goes to the trial that reached the rung first


def test_asynchronous_decisions_on_a_hand_computed_example():
    scheduler = MOASHA(grace_period=1, reduction_factor=2, max_epochs=4)
    assert list(scheduler.rungs) == [1, 2]
    arrivals = [("d", D, GO), ("b", B, GO), ("a", A, GO),
                # C: robust 0.9 but clean 0.1. Its product 0.09 is below every recorded one (D 0.16,
                # B 0.25, A 0.09): a scalarized ASHA stops it; on the front's end it goes on here
                ("c", C, GO),
                ("e", E, STOP),  # 4th of 5 on the front, next to A
                ("f", F, STOP)]  # dominated by all
    for trial_id, values, decision in arrivals:
        assert scheduler.decide(trial_id, report(1, values)) == decision, trial_id
    assert list(scheduler.rungs[1]) == ["d", "b", "a", "c", "e", "f"]
    assert scheduler.decide("a", report(1, A)) == GO  # a repeated report decides nothing again
    assert scheduler.decide("c", report(2, (0.2, 0.9))) == GO  # the first at rung 2
    assert scheduler.decide("b", report(2, (0.2, 0.5))) == STOP  # dominated by c there
    assert scheduler.stopped == 3


def test_decisions_wait_for_a_fresh_proxy():
    """With the proxy every 2 epochs, rung 1 is reached at epoch 2 (the first proxy at or after
    it) and a report that re-carries an older proxy decides nothing."""
    scheduler = MOASHA(grace_period=1, reduction_factor=2, max_epochs=8)
    assert scheduler.decide("a", report(1, A)) == GO
    nothing_yet = {"epoch": 1, "proxy_epoch": 0, "clean_acc": math.nan, "robust_acc": math.nan}
    assert scheduler.decide("f", nothing_yet) == GO and "f" not in scheduler.rungs[1]
    assert scheduler.decide("f", report(2, F)) == STOP and scheduler.rungs[1]["f"] == F
    assert scheduler.decide("a", report(2, A)) == GO and "a" in scheduler.rungs[2]
    # a proxy that reaches rungs 1 and 2 at once is judged at both, lowest first: B passes rung 1
    # (2nd of 3: A, B, F) and is stopped at rung 2 (2nd of 2: A, B)
    assert scheduler.decide("b", report(2, B)) == STOP
    assert list(scheduler.rungs[1]) == ["a", "f", "b"] and list(scheduler.rungs[2]) == ["a", "b"]
    assert scheduler.decide("a", report(5, A, proxy_epoch=2)) == GO and "a" not in scheduler.rungs[4]
    assert scheduler.decide("a", report(6, A, proxy_epoch=6)) == GO and "a" in scheduler.rungs[4]


@pytest.mark.parametrize("result", [{"final": True, "epoch": 1, "clean_acc": 0.0, "robust_acc": 0.0},
                                    {"epoch": 1, "clean_acc": math.nan, "robust_acc": math.nan}])
def test_the_final_report_and_a_diverged_epoch_decide_nothing(result):
    scheduler = MOASHA(grace_period=1, reduction_factor=2, max_epochs=4)
    scheduler.decide("a", report(1, A))
    assert scheduler.decide("b", result) == GO and list(scheduler.rungs[1]) == ["a"]
