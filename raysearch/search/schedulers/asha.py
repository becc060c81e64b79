"""``--scheduler asha``: asynchronous successive halving (Li et al., MLSys 2020)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raysearch.config import ExperimentConfig


def make_scheduler(exp: ExperimentConfig):
    """ASHA on the product of clean and robust accuracy, one rung per
    grace_period·reduction_factor^k epochs. A product ranks a trial low when either accuracy is
    low, so it also stops trials at the front's extremes (very robust, or very accurate): a
    budget saving bought with some front coverage."""
    from ray.tune.schedulers import ASHAScheduler

    # clean_x_robust: in every epoch's report (raysearch.worker) and in the trial's final one
    # (raysearch.search.trial). stop_last_trials=False: a trial that reaches max_t finishes by
    # itself (its final report and checkpoint) instead of being stopped at its last epoch
    return ASHAScheduler(time_attr="epoch", metric="clean_x_robust", mode="max", max_t=exp.max_epochs,
                         grace_period=exp.grace_period, reduction_factor=exp.reduction_factor,
                         stop_last_trials=False)
