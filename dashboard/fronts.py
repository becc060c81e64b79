"""Pareto fronts and hypervolumes of an objective table (one row per trial with ``clean`` and
``robust`` accuracies, as :func:`dashboard.views.objectives` returns), per group of trials
(a method or an experiment). Hypervolumes are measured from the reference point (0, 0)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from raysearch.pareto import hypervolume_2d, pareto_mask


def with_front(table: pd.DataFrame, group: str = "method") -> pd.DataFrame:
    """``table`` plus ``on_front``: the trial is non-dominated within its group in (clean, robust)."""
    out = table.copy()
    out["on_front"] = False
    for _, idx in out.groupby(group).groups.items():
        pts = out.loc[idx, ["clean", "robust"]].to_numpy(dtype=float)
        out.loc[idx, "on_front"] = pareto_mask(pts) if len(pts) else []
    return out


def hypervolumes(table: pd.DataFrame, group: str = "method", ref=(0.0, 0.0)) -> dict[str, float]:
    return {g: hypervolume_2d(sub[["clean", "robust"]].to_numpy(dtype=float), ref)
            for g, sub in table.groupby(group)}


def hypervolume_curve(table: pd.DataFrame, group: str = "method", ref=(0.0, 0.0)) -> pd.DataFrame:
    """Per group, the hypervolume after each finished trial in completion order
    (``finished_at``), with the cumulative device-hours spent (failed trials count: they used
    the devices too)."""
    rows = []
    done = table[table["finished_at"].notna()].sort_values("finished_at", kind="stable")
    for g, sub in done.groupby(group, sort=True):
        front = np.zeros((0, 2))
        hours = 0.0
        for n, rec in enumerate(sub.itertuples(index=False), start=1):
            dev = getattr(rec, "device_s")
            hours += 0.0 if pd.isna(dev) else float(dev) / 3600.0
            pt = np.array([[rec.clean, rec.robust]], dtype=float)
            if not np.isnan(pt).any():
                front = np.vstack([front, pt])
                front = front[pareto_mask(front)]
            rows.append({group: g, "n_trials": n, "device_hours": hours,
                         "hypervolume": hypervolume_2d(front, ref), "trial_id": rec.trial_id,
                         "experiment": rec.experiment, "finished_at": rec.finished_at})
    columns = dict.fromkeys([group, "n_trials", "device_hours", "hypervolume", "trial_id", "experiment", "finished_at"])
    return pd.DataFrame(rows, columns=list(columns))  # one "experiment" column when grouped by it
