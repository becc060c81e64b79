"""dashboard.recorded: the search space and provenance an experiment.json records, and which
hp_* columns were searched."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from dashboard import recorded
from dashboard_support import write_results
from raysearch import store


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_search_space_and_summary(root):
    record = json.loads((root / "pgd_at-digits" / store.EXPERIMENT).read_text())
    space = recorded.search_space(record)
    assert set(space) == {"eps_train", "attack_steps", "lr"} and space["lr"]["log"] is True
    assert recorded.search_space({"config": {"search_space": {"a": {"type": "int"}, "_doc": {}}}}) == {"a": {"type": "int"}}
    assert recorded.search_space({}) == {}
    assert recorded.experiment_summary(record)["method"] == "pgd_at"


def test_searched_columns_follow_the_space_else_what_varies():
    trials = pd.DataFrame({"hp_lr": [0.1, 0.2], "hp_epochs": [3, 3], "hp_beta": [1.0, 2.0], "hp_other": [None, None]})
    assert recorded.searched_columns(trials, {"lr": {"type": "float"}}) == ["hp_lr"]
    assert recorded.searched_columns(trials, {}) == ["hp_lr", "hp_beta"]
