"""dashboard.fronts: per-group Pareto fronts, hypervolumes and the hypervolume curve in
completion order, on results folders written through raysearch.store."""
from __future__ import annotations

import numpy as np
import pytest

from dashboard import fronts, load, views
from dashboard_support import write_results
from raysearch.pareto import hypervolume_2d, pareto_mask
from raysearch.schema import Status


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_front_per_method_and_hypervolume(root):
    res = load.load_results(root)
    table = fronts.with_front(views.objectives(res.trials, res.evals))
    for method, sub in table.groupby("method"):
        pts = sub[["clean", "robust"]].to_numpy(float)
        assert sub["on_front"].tolist() == pareto_mask(pts).tolist()
        assert fronts.hypervolumes(table)[method] == pytest.approx(hypervolume_2d(pts))
    assert table.loc[table["robust"].isna(), "on_front"].eq(False).all()


def test_hypervolume_curve_in_completion_order(root):
    res = load.load_results(root)
    table = fronts.with_front(views.objectives(res.trials, res.evals))
    curve = fronts.hypervolume_curve(table)
    for method, sub in curve.groupby("method"):
        done = table[(table["method"] == method) & table["finished_at"].notna()].sort_values("finished_at")
        assert sub["n_trials"].tolist() == list(range(1, len(done) + 1))
        assert sub["trial_id"].tolist() == done["trial_id"].tolist()
        assert np.all(np.diff(sub["hypervolume"]) >= 0)
        assert sub["hypervolume"].iloc[-1] == pytest.approx(hypervolume_2d(done[["clean", "robust"]].to_numpy(float)))
        # failed trials spend device time too
        assert sub["device_hours"].iloc[-1] == pytest.approx(done["device_s"].sum() / 3600)
        for k in range(1, len(done) + 1):
            assert sub["hypervolume"].iloc[k - 1] == pytest.approx(
                hypervolume_2d(done[["clean", "robust"]].to_numpy(float)[:k]))
    # the running trial (no finished_at) is not on the curve
    running = res.trials.loc[res.trials["status"] == Status.RUNNING, "trial_id"].item()
    assert running not in set(curve["trial_id"])
