"""dashboard.figures: the Plotly figures built from the dashboard's tables, without Streamlit."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from dashboard import figures, fronts, views
from raysearch.stats import accuracy_interval


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
    fig = figures.front_figure(table, "method", figures.colours(table["method"]), views.PROXY_VIEW)
    legend, on, off = fig.data
    assert legend.x == (None,) and legend.showlegend is not False
    assert list(on.x) == [0.6, 0.9] and on.marker.opacity == 1.0 and list(on.marker.symbol) == ["circle-open", "circle"]
    assert list(off.x) == [0.5] and off.marker.opacity == figures.FADED
    # the proxy is labelled a proxy on both axes and in the legend
    assert fig.layout.yaxis.title.text == "proxy robust accuracy (PGD + APGD-T, per epoch)"
    assert fig.layout.xaxis.title.text == "proxy clean accuracy (per epoch)"
    assert fig.layout.legend.title.text == "method · proxy"


def test_trials_a_masking_check_flagged_are_diamonds_with_a_legend_entry():
    table = fronts.with_front(pd.DataFrame({
        "experiment": "e", "trial_id": ["t1", "t2", "t3"], "method": "m",
        "status": ["completed", "running", "completed"], "clean": [0.9, 0.6, 0.5], "robust": [0.3, 0.5, 0.2],
        "masking": ["", "transfer_only", "square_only"]}))
    view = views.View(views.WORST_SEEN, "Worst case over seen attacks (final)",
                      "worst case over seen attacks (final suite)")
    fig = figures.front_figure(table, "method", figures.colours(table["method"]), view)
    flag_entry, legend, on, off = fig.data
    assert flag_entry.name == "masking check fired" and flag_entry.marker.symbol == figures.FLAGGED
    assert flag_entry.x == (None,)
    assert list(on.marker.symbol) == ["diamond-open", "circle"] and list(off.marker.symbol) == ["diamond"]
    assert on.customdata[0][6] == "<br>masking check fired: transfer_only" and on.customdata[1][6] == ""
    assert fig.layout.yaxis.title.text == "worst case over seen attacks (final suite)"
    assert fig.layout.xaxis.title.text == "clean accuracy (final suite)" and fig.layout.legend.title.text == "method"
    unflagged = figures.front_figure(table.assign(masking=""), "method", figures.colours(table["method"]), view)
    assert "masking check fired" not in {t.name for t in unflagged.data}


def test_scheduler_figure_colours_by_scheduler_and_dashes_the_final_suite():
    curve = pd.DataFrame({"experiment": ["a", "a", "a", "b"], "scheduler": ["mopbt", "mopbt", "mopbt", "none"],
                          "objective": ["proxy", "proxy", "final", "proxy"], "n_trials": [1, 2, 1, 1],
                          "device_hours": [0.1, 0.3, 0.1, 0.2], "hypervolume": [0.2, 0.3, 0.25, 0.1],
                          "trial_id": ["t1", "t2", "t1", "u1"]})
    fig = figures.scheduler_figure(curve, figures.colours(curve["scheduler"]))
    final, proxy, other = fig.data
    assert (proxy.name, list(proxy.x), list(proxy.y)) == ("mopbt · a · proxy", [0.1, 0.3], [0.2, 0.3])
    assert final.name == "mopbt · a · final" and final.line.dash == "dash" and proxy.line.dash == "solid"
    assert final.line.color == proxy.line.color != other.line.color
    assert fig.layout.xaxis.title.text.startswith("device-hours")


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


def _with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each objective's 95% interval as the store derives it, on 100 images."""
    out = table.copy()
    for name in ("clean", "robust"):
        ends = [accuracy_interval(v, 100) for v in out[name]]
        out[f"{name}_low"], out[f"{name}_high"] = [e[0] for e in ends], [e[1] for e in ends]
    return out


def test_the_front_draws_each_trials_95_percent_intervals_as_asymmetric_error_bars():
    table = fronts.with_front(_with_intervals(pd.DataFrame({
        "experiment": "e", "trial_id": ["t1", "t2", "t3"], "method": "m", "status": "completed",
        "clean": [0.9, 0.6, 0.5], "robust": [0.3, 0.5, 0.2]})))
    view = views.PROXY_VIEW
    fig = figures.front_figure(table, "method", figures.colours(table["method"]), view).to_dict()
    _, on, off = fig["data"]
    by_id = table.set_index("trial_id")
    for trace, ids in ((on, ["t2", "t1"]), (off, ["t3"])):
        rows = by_id.loc[ids]
        for axis, name in (("error_x", "clean"), ("error_y", "robust")):
            bars = trace[axis]
            assert bars["type"] == "data" and bars["symmetric"] is False
            assert bars["array"] == pytest.approx(list(rows[f"{name}_high"] - rows[name]))
            assert bars["arrayminus"] == pytest.approx(list(rows[name] - rows[f"{name}_low"]))
        last = rows.iloc[-1]  # robust 0.3 or 0.2: a Wilson interval away from 0.5 is asymmetric
        assert last["robust_high"] - last["robust"] > last["robust"] - last["robust_low"]
    assert on["customdata"][0][5] == " [0.404, 0.596]"  # t2's robust 0.5 on 100 images, in the hover text
    # without intervals (an older file), no error bars and an empty hover suffix
    bare = figures.front_figure(table.drop(columns=["clean_low", "clean_high", "robust_low", "robust_high"]),
                                "method", figures.colours(table["method"]), view).to_dict()
    assert all("error_x" not in t and "error_y" not in t for t in bare["data"])


def test_a_missing_interval_draws_no_bar_for_that_trial_only():
    table = _with_intervals(pd.DataFrame({"clean": [0.9, 0.6], "robust": [0.3, 0.5]}))
    table.loc[1, ["robust_low", "robust_high"]] = math.nan
    bars = figures.error_bars(table, "robust", "red")
    assert bars["array"][1] is None and bars["arrayminus"][1] is None and bars["array"][0] > 0
    assert bars["color"] == "red"
    table[["robust_low", "robust_high"]] = math.nan
    assert figures.error_bars(table, "robust") is None


def test_the_per_attack_bars_carry_error_bars():
    acc = pd.DataFrame({"trial": "e / a", "threat": ["clean", "seen"], "attack": ["clean", "pgd_ce"],
                        "accuracy": [0.9, 0.4], "aggregate": False})
    ends = [accuracy_interval(v, 360) for v in acc["accuracy"]]
    acc["accuracy_low"], acc["accuracy_high"] = [e[0] for e in ends], [e[1] for e in ends]
    (bars,) = figures.attack_bars(acc).to_dict()["data"]
    assert bars["error_y"]["array"] == pytest.approx(list(acc["accuracy_high"] - acc["accuracy"]))
    assert bars["error_y"]["arrayminus"] == pytest.approx(list(acc["accuracy"] - acc["accuracy_low"]))
    assert "error_y" not in figures.attack_bars(acc.drop(columns=["accuracy_low"])).to_dict()["data"][0]
