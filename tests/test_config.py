"""Experiment configuration (raysearch.config): derived values, and what importing it costs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from raysearch.config import ExperimentConfig
from tests.conftest import python_c


def test_the_experiment_folder_is_derived_not_stored():
    exp = ExperimentConfig(method="standard", storage_path="/r", name="x")
    assert exp.exp_dir == Path("/r/x")
    assert dataclasses.replace(exp, name="y").exp_dir == Path("/r/y")
    assert "exp_dir" not in dataclasses.asdict(exp)  # so experiment.json does not record it


def test_the_radii_of_a_robustness_curve_default_to_none():
    exp = ExperimentConfig(method="standard")
    assert exp.eps_list == () and dataclasses.asdict(exp)["eps_list"] == ()
    assert dataclasses.replace(exp, eps_list=(0.1, 0.2)).eps_list == (0.1, 0.2)


def test_importing_the_config_imports_no_torch():
    code = "import sys; import raysearch.config; print('torch' in sys.modules, 'trainables' in sys.modules)"
    out = python_c(code)
    assert out.split() == ["False", "False"]
