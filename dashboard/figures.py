"""The dashboard's Plotly figures, built from the tables of :mod:`dashboard.views`,
:mod:`dashboard.fronts`, :mod:`dashboard.details` and :mod:`dashboard.curves`: no Streamlit,
no reading. Accuracies are fractions in [0, 1], shown as percentages; where a table carries an
accuracy's 95% Wilson interval (``<name>_low``, ``<name>_high``) it is drawn as error bars."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import convert_colors_to_same_type, qualitative
from plotly.subplots import make_subplots

from dashboard.views import MASKING, UNION_UNSEEN, WORST_SEEN, View, with_interval
from raysearch.schema import HP_PREFIX, Status

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set2
FADED = 0.3  # marker opacity of dominated trials
PCT = ".1%"
OTHER = "#888"  # a group without a colour of its own
FLAGGED = "diamond"  # marker of a trial whose final evaluation fired a gradient-masking check


def colours(groups) -> dict[str, str]:
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(sorted(set(groups)))}


def _hover(group: str) -> str:
    return ("<b>%{customdata[1]}</b><br>%{customdata[0]}<br>" + group + ": %{customdata[3]}<br>"
            "status: %{customdata[2]}<br>clean %{x:.3f}%{customdata[4]} · robust %{y:.3f}%{customdata[5]}"
            "%{customdata[6]}<extra></extra>")


def _symbols(part: pd.DataFrame) -> list[str]:
    """Circles, diamonds for trials a masking check flagged; open while the trial runs."""
    flagged = part[MASKING].astype(bool) if MASKING in part else pd.Series(False, index=part.index)
    return [(FLAGGED if f else "circle") + ("-open" if r else "")
            for f, r in zip(flagged, part["status"] == Status.RUNNING)]


def _translucent(colour: str, alpha: float) -> str:
    rgb = convert_colors_to_same_type(colour, colortype="rgb")[0][0]
    return rgb.replace("rgb(", "rgba(").replace(")", f", {alpha})")


def _nulls(values: np.ndarray) -> list[float | None]:
    """Plotly data with None (no bar) where a value is missing."""
    return [float(v) if np.isfinite(v) else None for v in values]


def error_bars(table: pd.DataFrame, name: str, colour: str | None = None) -> dict | None:
    """Asymmetric Plotly error bars of column ``name`` from its interval columns
    (``<name>_low``, ``<name>_high``); None where the table has no interval for any row."""
    columns = with_interval(name)
    if not set(columns) <= set(table.columns):
        return None
    value, low, high = (pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float) for c in columns)
    plus, minus = high - value, value - low
    if not np.isfinite(plus).any():
        return None
    bars = {"type": "data", "symmetric": False, "array": _nulls(plus), "arrayminus": _nulls(minus),
            "thickness": 1, "width": 0}
    return bars if colour is None else {**bars, "color": colour}


def interval_text(table: pd.DataFrame, name: str) -> list[str]:
    """Per row, " [low, high]" of column ``name``'s interval for a hover text ("" without one)."""
    low, high = with_interval(name)[1:]
    if low not in table or high not in table:
        return [""] * len(table)
    return [f" [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) and pd.notna(hi) else ""
            for lo, hi in zip(table[low], table[high])]


def add_front(fig: go.Figure, table: pd.DataFrame, group: str, cmap: dict[str, str], row=None, col=None,
              legend: bool = True) -> None:
    """Each group's front as a staircase (the border of the region it dominates), its
    dominated trials faded, running trials as open markers, trials flagged by a
    gradient-masking check as diamonds (with a legend entry of their own)."""
    pts = table.dropna(subset=["clean", "robust"])
    kw = {} if row is None else {"row": row, "col": col}
    if legend and MASKING in pts and pts[MASKING].astype(bool).any():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="masking check fired",
                                 marker={"color": OTHER, "size": 10, "symbol": FLAGGED}), **kw)
    for g, sub in pts.groupby(group, sort=True):
        c = cmap.get(g, OTHER)
        if legend:  # a data-free entry, so the legend's symbol does not follow the first trial's status
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers", name=str(g), legendgroup=str(g),
                                     line={"color": c, "width": 2}, marker={"color": c, "size": 10}), **kw)
        for on in (True, False):
            part = sub[sub["on_front"] == on].sort_values("clean")
            if part.empty:
                continue
            bar_colour = _translucent(c, 0.6 if on else FADED)  # 95% intervals, fainter than the points
            flags = part[MASKING] if MASKING in part else pd.Series("", index=part.index)
            customdata = part[["experiment", "trial_id", "status", group]].astype(str).assign(
                clean_interval=interval_text(part, "clean"), robust_interval=interval_text(part, "robust"),
                masking=["<br>masking check fired: " + f if f else "" for f in flags])
            fig.add_trace(go.Scatter(
                x=part["clean"], y=part["robust"], mode="lines+markers" if on else "markers",
                name=str(g), legendgroup=str(g), showlegend=False,
                line={"color": c, "shape": "vh", "width": 2},
                marker={"color": c, "size": 11 if on else 8, "opacity": 1.0 if on else FADED,
                        "symbol": _symbols(part),
                        "line": {"width": 1, "color": "white" if on else c}},
                error_x=error_bars(part, "clean", bar_colour), error_y=error_bars(part, "robust", bar_colour),
                customdata=customdata.to_numpy(), hovertemplate=_hover(group)), **kw)


def span(values) -> list[float] | None:
    """Axis range around accuracies: the data padded by 5% of its spread (at least 2 points),
    never far outside [0, 1]. Plotly's own range around one or two points is far too wide."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if v.empty:
        return None
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.05 * (hi - lo), 0.02)
    return [max(lo - pad, -0.01), min(hi + pad, 1.01)]


def front_figure(table: pd.DataFrame, group: str, cmap: dict[str, str], view: View) -> go.Figure:
    """The fronts under ``view``, its axes titled by it (the proxy's say "proxy", and so does
    the legend's title)."""
    fig = go.Figure()
    add_front(fig, table, group, cmap)
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 30, "b": 10}, uirevision="front",
                      legend_title_text=f"{group} · proxy" if view.proxy else group,
                      xaxis={"title": view.clean_axis, "tickformat": PCT, "range": span(table["clean"])},
                      yaxis={"title": view.robust_title, "tickformat": PCT, "range": span(table["robust"])})
    return fig


def attack_bars(acc: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for trial, sub in acc.groupby("trial", sort=False):
        # hatched: summaries over several attacks (per-image worst cases, means)
        fig.add_bar(x=sub["threat"] + " · " + sub["attack"], y=sub["accuracy"], name=trial,
                    marker_pattern_shape=["/" if a else "" for a in sub["aggregate"]],
                    error_y=error_bars(sub, "accuracy"), customdata=np.array(interval_text(sub, "accuracy")),
                    hovertemplate="%{x}: %{y:.3f}%{customdata}<extra>" + trial + "</extra>")
    fig.update_layout(barmode="group", height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis={"title": "accuracy", "tickformat": PCT, "range": [0, 1]},
                      legend={"orientation": "h", "y": -0.35})
    return fig


def seen_unseen_figure(su: pd.DataFrame, group: str, cmap: dict[str, str]) -> go.Figure:
    """Each trial's worst case over seen attacks against its union over unseen attacks, with
    the diagonal where nothing is lost."""
    fig = go.Figure()
    for g, sub in su.groupby(group, sort=True):
        fig.add_scatter(x=sub[WORST_SEEN], y=sub[UNION_UNSEEN], mode="markers", name=str(g),
                        marker={"color": cmap.get(g, OTHER), "size": 10},
                        error_x=error_bars(sub, WORST_SEEN, cmap.get(g, OTHER)),
                        error_y=error_bars(sub, UNION_UNSEEN, cmap.get(g, OTHER)),
                        customdata=sub[["trial_id", "retained"]].to_numpy(),
                        hovertemplate="%{customdata[0]}<br>seen %{x:.3f} → unseen %{y:.3f}"
                                      "<br>retained %{customdata[1]:.0%}<extra></extra>")
    top = float(su[[WORST_SEEN, UNION_UNSEEN]].max().max()) * 1.05 or 1.0
    fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dot", "color": "grey"},
                    name="unseen = seen", hoverinfo="skip")
    fig.update_layout(height=420, title="Robustness per trial: seen vs unseen",
                      xaxis={"title": "worst case over seen attacks", "tickformat": PCT},
                      yaxis={"title": "union over unseen adversarial attacks", "tickformat": PCT},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def retained_figure(su: pd.DataFrame, group: str, cmap: dict[str, str]) -> go.Figure:
    """Per trial, the share of its seen robustness kept under unseen attacks, highest first."""
    bars = su.dropna(subset=["retained"]).sort_values("retained", ascending=False)
    fig = go.Figure()
    for g, sub in bars.groupby(group, sort=True):
        fig.add_bar(x=sub["trial_id"], y=sub["retained"], name=str(g), marker_color=cmap.get(g, OTHER),
                    hovertemplate="%{x}: %{y:.0%} of its seen robustness survives<extra></extra>")
    fig.update_layout(height=420, title="Seen robustness kept under unseen",
                      yaxis={"tickformat": ".0%", "title": "union_unseen / worst_seen"},
                      xaxis={"categoryorder": "array", "categoryarray": bars["trial_id"].tolist()},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def seen_unseen_fronts_figure(tables: list[pd.DataFrame], group: str, cmap: dict[str, str]) -> go.Figure:
    """The fronts under worst_seen (left) and under union_unseen (right) on shared axes;
    ``tables`` are the two objective tables with ``on_front``."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=["clean vs worst case over seen", "clean vs union over unseen adversarial"])
    both = pd.concat(tables)
    for i, table in enumerate(tables, start=1):
        add_front(fig, table, group, cmap, row=1, col=i, legend=i == 1)
        fig.update_xaxes(title_text="clean accuracy", tickformat=PCT, range=span(both["clean"]), row=1, col=i)
    fig.update_yaxes(title_text="robust accuracy", tickformat=PCT, range=span(both["robust"]), row=1, col=1)
    fig.update_layout(height=440, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def curve_figure(curve: pd.DataFrame, x: str, group: str, cmap: dict[str, str], title: str) -> go.Figure:
    fig = go.Figure()
    for g, sub in curve.groupby(group, sort=True):
        fig.add_scatter(x=sub[x], y=sub["hypervolume"], mode="lines+markers", name=str(g),
                        line={"shape": "hv", "color": cmap.get(g, OTHER)},
                        customdata=sub[["trial_id"]].to_numpy(),
                        hovertemplate="after %{customdata[0]}<br>%{x:.3g}: %{y:.4f}<extra>" + str(g) + "</extra>")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title=title,
                      xaxis_title=x.replace("_", " "), yaxis_title="hypervolume")
    return fig


def scheduler_figure(curve: pd.DataFrame, cmap: dict[str, str]) -> go.Figure:
    """Hypervolume against device-hours, one line per experiment and objective (the table of
    :func:`dashboard.efficiency.scheduler_curves`): coloured by scheduler, the proxy's solid and
    the final suite's dashed."""
    fig = go.Figure()
    for (experiment, objective), sub in curve.groupby(["experiment", "objective"], sort=True):
        sched = str(sub["scheduler"].iloc[0])
        name = f"{sched} · {experiment} · {objective}"
        fig.add_scatter(x=sub["device_hours"], y=sub["hypervolume"], mode="lines+markers", name=name,
                        legendgroup=sched, line={"shape": "hv", "color": cmap.get(sched, OTHER),
                                                 "dash": "solid" if objective == "proxy" else "dash"},
                        customdata=sub[["trial_id"]].to_numpy(),
                        hovertemplate="after %{customdata[0]}<br>%{x:.3g} device-hours: %{y:.4f}<extra>"
                                      + name + "</extra>")
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title="Hypervolume against device-hours per scheduler (solid: proxy, dashed: final suite)",
                      xaxis_title="device-hours (search, cumulative)", yaxis_title="hypervolume",
                      legend={"orientation": "h", "y": -0.25})
    return fig


POINT_SYMBOLS = {"clean": "circle-open", "eps_eval": "diamond", "radius": "circle"}  # dashboard.curves' points


def robustness_curve_figure(curve: pd.DataFrame) -> go.Figure:
    """Accuracy against the L∞ radius, one line per trial (the table of
    :func:`dashboard.curves.curves`): clean at ε = 0, each trial's ε_eval as a diamond."""
    fig = go.Figure()
    for i, (trial, sub) in enumerate(curve.groupby("trial", sort=False)):
        fig.add_scatter(x=sub["eps"], y=sub["accuracy"], mode="lines+markers", name=trial,
                        line={"color": PALETTE[i % len(PALETTE)]},
                        error_y=error_bars(sub, "accuracy", PALETTE[i % len(PALETTE)]),
                        marker={"size": [12 if p == "eps_eval" else 8 for p in sub["point"]],
                                "symbol": [POINT_SYMBOLS.get(p, "circle") for p in sub["point"]]},
                        customdata=sub[["point"]].to_numpy(),
                        hovertemplate="ε %{x:.4g} (%{customdata[0]}): %{y:.3f}<extra>" + trial + "</extra>")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title="Accuracy vs ε: worst case over seen attacks",
                      xaxis={"title": "L∞ radius ε ([0, 1] pixel scale)", "rangemode": "tozero"},
                      yaxis={"title": "accuracy", "tickformat": PCT, "range": [0, 1.02]},
                      legend={"orientation": "h", "y": -0.3})
    return fig


def parallel_figure(trials: pd.DataFrame, hp_cols: list[str], space: dict, colour: str, label: str) -> go.Figure:
    dims = []
    for col in hp_cols:
        name = col.removeprefix(HP_PREFIX)
        values = trials[col]
        spec = space.get(name, {})
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            vals = values.astype(float)
            if spec.get("log") and (vals > 0).all():
                dims.append({"label": f"log10 {name}", "values": np.log10(vals)})
            else:
                dims.append({"label": name, "values": vals})
        else:
            cats = sorted(values.astype(str).unique())
            codes = values.astype(str).map({c: i for i, c in enumerate(cats)})
            dims.append({"label": name, "values": codes, "tickvals": list(range(len(cats))), "ticktext": cats})
    dims.append({"label": label, "values": trials[colour], "range": [0, 1]})
    # The last axis is the objective itself, so the colour needs no separate scale.
    fig = go.Figure(go.Parcoords(line={"color": trials[colour], "colorscale": "Viridis", "showscale": False,
                                       "cmin": 0, "cmax": 1}, dimensions=dims))
    fig.update_layout(height=420, margin={"l": 60, "r": 60, "t": 60, "b": 20})
    return fig


def slice_figure(trials: pd.DataFrame, hp_cols: list[str], space: dict, colour: str, label: str,
                 tint: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(hp_cols), shared_yaxes=True,
                        subplot_titles=[c.removeprefix(HP_PREFIX) for c in hp_cols])
    for i, col in enumerate(hp_cols, start=1):
        fig.add_scatter(x=trials[col], y=trials[colour], mode="markers", row=1, col=i, showlegend=False,
                        marker={"color": tint, "size": 8}, customdata=trials[["trial_id"]].to_numpy(),
                        hovertemplate="%{customdata[0]}<br>%{x}: %{y:.3f}<extra></extra>")
        if space.get(col.removeprefix(HP_PREFIX), {}).get("log"):
            fig.update_xaxes(type="log", row=1, col=i)
    fig.update_yaxes(title_text=label, tickformat=PCT, row=1, col=1)
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig
