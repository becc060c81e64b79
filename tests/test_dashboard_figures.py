"""dashboard.figures: the Plotly figures built from the dashboard's tables, without Streamlit."""
from __future__ import annotations

import pandas as pd
import pytest

from dashboard import figures, fronts


def test_span_pads_the_data_and_stays_near_the_unit_interval():
    assert figures.span([]) is None and figures.span([None, "x"]) is None
    assert figures.span([0.5]) == pytest.approx([0.48, 0.52])  # one point: at least 2 points of padding
    assert figures.span([0.0, 1.0]) == pytest.approx([-0.01, 1.01])


def test_colours_are_stable_per_group():
    assert figures.colours(["b", "a", "b"]) == {"a": figures.PALETTE[0], "b": figures.PALETTE[1]}


def test_front_figure_fades_dominated_trials_and_opens_running_ones():
    table = fronts.with_front(pd.DataFrame({
        "experiment": "e", "trial_id": ["t1", "t2", "t3", "t4"], "method": "m",
        "status": ["completed", "running", "completed", "failed"],
        "clean": [0.9, 0.6, 0.5, None], "robust": [0.3, 0.5, 0.2, None]}))
    fig = figures.front_figure(table, "method", figures.colours(table["method"]), "Per-epoch proxy (seen attack)")
    legend, on, off = fig.data
    assert legend.x == (None,) and legend.showlegend is not False
    assert list(on.x) == [0.6, 0.9] and on.marker.opacity == 1.0 and list(on.marker.symbol) == ["circle-open", "circle"]
    assert list(off.x) == [0.5] and off.marker.opacity == figures.FADED
    assert fig.layout.yaxis.title.text == "robust accuracy (per-epoch proxy)"


def test_robustness_curve_figure_draws_one_line_per_trial_with_eps_eval_marked():
    curve = pd.DataFrame({"trial": ["e / a"] * 4 + ["e / b"] * 2, "experiment": "e",
                          "trial_id": ["a"] * 4 + ["b"] * 2, "eps": [0.0, 0.1, 0.2, 0.3, 0.0, 0.2],
                          "accuracy": [0.9, 0.7, 0.5, 0.2, 0.95, 0.1],
                          "point": ["clean", "radius", "eps_eval", "radius", "clean", "eps_eval"]})
    fig = figures.robustness_curve_figure(curve)
    a, b = fig.data
    assert (a.name, list(a.x), list(a.y)) == ("e / a", [0.0, 0.1, 0.2, 0.3], [0.9, 0.7, 0.5, 0.2])
    assert list(a.marker.symbol) == ["circle-open", "circle", "diamond", "circle"]
    assert list(b.x) == [0.0, 0.2] and a.line.color != b.line.color
    assert fig.layout.yaxis.tickformat == figures.PCT and "seen" in fig.layout.title.text
