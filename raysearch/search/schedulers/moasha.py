"""``--scheduler moasha``: multi-objective asynchronous successive halving (Schmucker et al.
2021, as Syne Tune's MOASHA), on clean and robust accuracy at once.

Rungs sit at grace_period · reduction_factor^k epochs below --max-epochs. When a trial reaches a
rung, it is placed among the trials recorded at that rung so far by non-dominated sorting, ties
inside a front broken by the ε-net order (``ranking.moasha_order``); it goes on if it is among
the top ⌈n / reduction_factor⌉ of those n (the first at a rung always goes on), else it is
stopped. Decisions are asynchronous, as in ASHA: a trial is compared with whoever reached the
rung before it. Unlike a scalarization, the ranking keeps a trial at either end of the front
(very accurate, or very robust) as readily as one in the middle.

A rung counts as reached by the first report whose proxy was measured at or after the rung's
epoch (``proxy_epoch``; every epoch's report when the proxy runs every epoch): a decision is
never taken on stale accuracies. A trial the scheduler stops ends without its driver's final
report; the searcher tells Optuna PRUNED for it (``raysearch.search.searcher``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raysearch.search.schedulers.ranking import moasha_order

if TYPE_CHECKING:
    from raysearch.config import ExperimentConfig


def rung_epochs(grace_period: int, factor: float, max_epochs: int) -> list[int]:
    """Epochs at which trials are compared: ⌈grace · factor^k⌉ below ``max_epochs`` (a trial
    that reaches ``max_epochs`` has finished; there is nothing left to stop)."""
    out, milestone = [], float(grace_period)
    while math.ceil(milestone) < max_epochs:
        if math.ceil(milestone) not in out:
            out.append(math.ceil(milestone))
        milestone *= factor
    return out


def promotes(recorded: list[tuple[float, float]], new: tuple[float, float], factor: float) -> bool:
    """Whether a trial reaching a rung with accuracies ``new`` goes on, given the accuracies of
    the trials ``recorded`` there before it: it must be among the first ⌈n / factor⌉ of all n in
    MO-ASHA's order (a tie with an earlier trial goes to the earlier one)."""
    points = [*recorded, new]
    position = moasha_order(points).index(len(points) - 1)
    return position * factor < len(points)


def proxy_values(result: dict) -> tuple[int, tuple[float, float]] | None:
    """(epoch the proxy was measured at, (clean, robust)) of an epoch's report, or None for the
    driver's final report and for a report without finite accuracies (a diverged trial ends
    by itself)."""
    if result.get("final") or "epoch" not in result:
        return None
    values = (result.get("clean_acc"), result.get("robust_acc"))
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return int(result.get("proxy_epoch", result["epoch"])), (float(values[0]), float(values[1]))


class MOASHA(FIFOScheduler):
    """The Ray Tune scheduler. ``rungs``: rung epoch -> {trial id: (clean, robust)} recorded
    there, in the order trials reached it."""

    def __init__(self, grace_period: int, reduction_factor: float, max_epochs: int):
        super().__init__()
        self.factor = reduction_factor
        self.rungs: dict[int, dict[str, tuple[float, float]]] = {
            e: {} for e in rung_epochs(grace_period, reduction_factor, max_epochs)}
        self.stopped = 0

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def decide(self, trial_id: str, result: dict) -> str:
        """CONTINUE or STOP for one report of one trial. It is recorded and judged at every rung
        it reached and was not recorded at yet, lowest first (a proxy run every few epochs can
        reach two rungs at once), and stopped at the first it does not pass."""
        measured = proxy_values(result)
        if measured is None:
            return TrialScheduler.CONTINUE
        epoch, values = measured
        for milestone in sorted(self.rungs):
            recorded = self.rungs[milestone]
            if epoch < milestone or trial_id in recorded:
                continue
            goes_on = promotes(list(recorded.values()), values, self.factor)
            recorded[trial_id] = values
            if not goes_on:
                self.stopped += 1
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"MO-ASHA: {self.stopped} stopped; trials per rung " + ", ".join(
            f"{e}: {len(r)}" for e, r in sorted(self.rungs.items()))


def make_scheduler(exp: ExperimentConfig) -> MOASHA:
    return MOASHA(exp.grace_period, exp.reduction_factor, exp.max_epochs)
