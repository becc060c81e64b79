"""dashboard.efficiency: hypervolume against device-hours per experiment, labelled by its
scheduler, under the proxy and the final suite, on results written through raysearch.store."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dashboard import efficiency, load, views
from dashboard_support import write_experiment
from raysearch import store
from raysearch.pareto import hypervolume_2d


@pytest.fixture
def root(tmp_path):
    write_experiment(tmp_path / "r", "pgd_at", n=7, seed=1, scheduler="mopbt", name="pbt")
    write_experiment(tmp_path / "r", "pgd_at", n=5, seed=2, scheduler="moasha", final=False, name="asha")
    return tmp_path / "r"


def test_hypervolume_of_the_trials_so_far_against_device_hours_per_scheduler(root):
    res = load.load_results(root)
    curve = efficiency.scheduler_curves(res.trials, res.evals, res.recorded)
    assert list(curve.columns) == efficiency.COLUMNS
    assert dict(curve.groupby("experiment")["scheduler"].first()) == {"pbt": "mopbt", "asha": "moasha"}
    assert set(map(tuple, curve[["experiment", "objective"]].drop_duplicates().to_numpy())) == {
        ("pbt", "proxy"), ("pbt", "final"), ("asha", "proxy")}  # no final suite ran on "asha"
    for (experiment, objective), sub in curve.groupby(["experiment", "objective"]):
        view = views.PROXY if objective == "proxy" else views.WORST_SEEN
        table = views.objectives(res.trials, res.evals, view)
        done = table[(table["experiment"] == experiment) & table["finished_at"].notna()].sort_values("finished_at")
        assert sub["trial_id"].tolist() == done["trial_id"].tolist()
        # every finished trial's device time counts, failed or not evaluated by the final suite
        assert sub["device_hours"].tolist() == pytest.approx((done["device_s"].cumsum() / 3600).tolist())
        pts = done[["clean", "robust"]].to_numpy(float)
        assert sub["hypervolume"].tolist() == pytest.approx([hypervolume_2d(pts[:k]) for k in range(1, len(pts) + 1)])
        assert np.all(np.diff(sub["hypervolume"]) >= 0) and sub["hypervolume"].iloc[-1] > 0
    pbt = curve[curve["experiment"] == "pbt"]
    final, proxy = (pbt[pbt["objective"] == o]["hypervolume"].iloc[-1] for o in ("final", "proxy"))
    assert final != proxy


def test_the_scheduler_comes_from_the_trials_where_experiment_json_lacks_it(root):
    record = json.loads((root / "asha" / store.EXPERIMENT).read_text())
    del record["config"]["scheduler"]
    store.write_json(root / "asha" / store.EXPERIMENT, record)
    (root / "pbt" / store.EXPERIMENT).unlink()
    res = load.load_results(root)
    curve = efficiency.scheduler_curves(res.trials, res.evals, res.recorded)
    assert dict(curve.groupby("experiment")["scheduler"].first()) == {"pbt": "mopbt", "asha": "moasha"}
    bare = res.trials.drop(columns=["scheduler"])
    curve = efficiency.scheduler_curves(bare, res.evals, res.recorded)
    assert set(curve["scheduler"]) == {"unknown"}
    assert efficiency.scheduler_curves(res.trials.iloc[:0], res.evals.iloc[:0], {}).empty
