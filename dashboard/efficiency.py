"""Search efficiency per scheduler: for each experiment, the hypervolume of the trials finished
so far against the device-hours they spent, under the per-epoch proxy and, where a final
evaluation ran, under the final suite's worst case over seen attacks. One curve per
(experiment, objective), labelled with the scheduler it ran with, so searches
that stop trials early or train a population can be compared with plain ones at equal cost.

Device-hours are the search's: each trial's ``device_s`` (failed ones included) in
``finished_at`` order; the final evaluation's own cost is not counted. A trial the final suite
did not evaluate adds device-hours and no point to the final curve. Pure pandas."""
from __future__ import annotations

from typing import Any

import pandas as pd

from dashboard.fronts import hypervolume_curve
from dashboard.recorded import UNKNOWN, scheduler
from dashboard.views import PROXY, WORST_SEEN, objectives

OBJECTIVES = {PROXY: "proxy", WORST_SEEN: "final"}  # view -> how a curve names it
COLUMNS = ["experiment", "scheduler", "objective", "n_trials", "device_hours", "hypervolume", "trial_id"]


def scheduler_curves(trials: pd.DataFrame, evals: pd.DataFrame, recorded: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Long table: per experiment and objective ("proxy", "final"), the hypervolume (reference
    point (0, 0)) after each finished trial, with the cumulative device-hours and the
    experiment's scheduler. An experiment without final results has no "final" rows."""
    parts = []
    for view, name in OBJECTIVES.items():
        table = objectives(trials, evals, view)
        measured = table.groupby("experiment")["robust"].apply(lambda r: r.notna().any())
        curve = hypervolume_curve(table[table["experiment"].isin(measured[measured].index)], "experiment")
        if len(curve):
            parts.append(curve.assign(objective=name))
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(parts, ignore_index=True)
    out["scheduler"] = out["experiment"].map(lambda e: scheduler_of(trials, recorded, e))
    return out[COLUMNS]


def scheduler_of(trials: pd.DataFrame, recorded: dict[str, dict[str, Any]], experiment: str) -> str:
    """The experiment's scheduler: its experiment.json's, else its trials' ``scheduler``."""
    name = scheduler(recorded.get(experiment, {}))
    if name != UNKNOWN:
        return name
    stored = trials.loc[trials["experiment"] == experiment].reindex(columns=["scheduler"])["scheduler"]
    stored = stored[stored.notna() & (stored.astype(str) != "")]
    return str(stored.mode().iloc[0]) if len(stored) else UNKNOWN
