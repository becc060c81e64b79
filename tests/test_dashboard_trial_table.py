"""dashboard.trial_table: the trial table joined with a view's objectives, its filters, sort and
CSV, on results folders written through raysearch.store."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from dashboard import fronts, load, trial_table, views
from dashboard_support import write_results


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_filter_sort_and_csv(root):
    res = load.load_results(root)
    table = trial_table.trial_table(res.trials, fronts.with_front(views.objectives(res.trials, res.evals)))
    assert table.columns[:2].tolist() == load.KEY and "hp_lr" in table
    out = trial_table.filter_trials(table, methods=["pgd_at"], statuses=["completed"], sort_by="robust")
    assert set(out["method"]) == {"pgd_at"} and set(out["status"]) == {"completed"}
    assert out["robust"].is_monotonic_decreasing
    front = trial_table.filter_trials(table, front_only=True)
    assert front["on_front"].all() and len(front) == table["on_front"].sum()
    high = trial_table.filter_trials(table, min_robust=0.3)
    assert (high["robust"] >= 0.3).all()
    csv = trial_table.to_csv(out)
    back = pd.read_csv(io.BytesIO(csv))
    assert back["trial_id"].tolist() == out["trial_id"].tolist()
