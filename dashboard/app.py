"""The raysearch dashboard: clean-vs-robust Pareto fronts of one or many experiments.

    streamlit run dashboard/app.py -- --results ray_results/ [--refresh 5]

``--results`` is a results root (one folder per experiment, or one experiment folder); the page
reads nothing outside it. While a search runs, the page checks the result files' modification
times every ``--refresh`` seconds and redraws when they change (0 turns this off).

Layout only: every table comes from the pure functions of :mod:`dashboard.data`, cached here on
the files' fingerprint, so a redraw without new results reads nothing.
"""
from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dashboard import data

logger = logging.getLogger("dashboard")

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Set2
FADED = 0.3  # marker opacity of dominated trials
MAX_BARS = 8  # selected trials drawn in the per-attack chart; the tables show them all
PCT = ".1%"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboard/app.py", add_help=False, exit_on_error=False)
    p.add_argument("--results", default="ray_results", help="results root (experiment folders below it)")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between checks for new results; 0: off")
    args, _ = p.parse_known_args(argv)
    return args


@st.cache_data(show_spinner="Reading results…", max_entries=8)
def load(root: str, stamp: tuple) -> data.Results:
    """``stamp`` is :func:`data.fingerprint`: new files, new cache entry."""
    return data.load_results(root)


@contextmanager
def guarded(what: str):
    """Show a failure of one section as a message and keep drawing the others."""
    try:
        yield
    except Exception as exc:  # any failure of a chart becomes a message on the page, the log keeps the trace
        logger.exception("could not show %s", what)
        st.error(f"Could not show {what}: {exc.__class__.__name__}: {exc}")


def colours(groups) -> dict[str, str]:
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(sorted(set(groups)))}


def _hover(group: str) -> str:
    return ("<b>%{customdata[1]}</b><br>%{customdata[0]}<br>" + group + ": %{customdata[3]}<br>"
            "status: %{customdata[2]}<br>clean %{x:.3f} · robust %{y:.3f}<extra></extra>")


def add_front(fig: go.Figure, table: pd.DataFrame, group: str, cmap: dict[str, str], row=None, col=None,
              legend: bool = True) -> None:
    """Each group's front as a staircase (the border of the region it dominates), its
    dominated trials faded, running trials as open markers."""
    pts = table.dropna(subset=["clean", "robust"])
    kw = {} if row is None else {"row": row, "col": col}
    for g, sub in pts.groupby(group, sort=True):
        c = cmap.get(g, "#888")
        if legend:  # a data-free entry, so the legend's symbol does not follow the first trial's status
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers", name=str(g), legendgroup=str(g),
                                     line={"color": c, "width": 2}, marker={"color": c, "size": 10}), **kw)
        for on in (True, False):
            part = sub[sub["on_front"] == on].sort_values("clean")
            if part.empty:
                continue
            running = part["status"] == "running"
            fig.add_trace(go.Scatter(
                x=part["clean"], y=part["robust"], mode="lines+markers" if on else "markers",
                name=str(g), legendgroup=str(g), showlegend=False,
                line={"color": c, "shape": "vh", "width": 2},
                marker={"color": c, "size": 11 if on else 8, "opacity": 1.0 if on else FADED,
                        "symbol": ["circle-open" if r else "circle" for r in running],
                        "line": {"width": 1, "color": "white" if on else c}},
                customdata=part[["experiment", "trial_id", "status", group]].astype(str).to_numpy(),
                hovertemplate=_hover(group)), **kw)


def span(values) -> list[float] | None:
    """Axis range around accuracies: the data padded by 5% of its spread (at least 2 points),
    never far outside [0, 1]. Plotly's own range around one or two points is far too wide."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna()
    if v.empty:
        return None
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.05 * (hi - lo), 0.02)
    return [max(lo - pad, -0.01), min(hi + pad, 1.01)]


def front_figure(table: pd.DataFrame, group: str, cmap: dict[str, str], robust_label: str) -> go.Figure:
    fig = go.Figure()
    add_front(fig, table, group, cmap)
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 30, "b": 10}, uirevision="front",
                      legend_title_text=group,
                      xaxis={"title": "clean accuracy", "tickformat": PCT, "range": span(table["clean"])},
                      yaxis={"title": f"robust accuracy ({robust_label.split(' (')[0].lower()})", "tickformat": PCT,
                             "range": span(table["robust"])})
    return fig


def attack_bars(acc: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for trial, sub in acc.groupby("trial", sort=False):
        # hatched: summaries over several attacks (per-image worst cases, means)
        fig.add_bar(x=sub["threat"] + " · " + sub["attack"], y=sub["accuracy"], name=trial,
                    marker_pattern_shape=["/" if a else "" for a in sub["aggregate"]],
                    hovertemplate="%{x}: %{y:.3f}<extra>" + trial + "</extra>")
    fig.update_layout(barmode="group", height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis={"title": "accuracy", "tickformat": PCT, "range": [0, 1]},
                      legend={"orientation": "h", "y": -0.35})
    return fig


def curve_figure(curve: pd.DataFrame, x: str, group: str, cmap: dict[str, str], title: str) -> go.Figure:
    fig = go.Figure()
    for g, sub in curve.groupby(group, sort=True):
        fig.add_scatter(x=sub[x], y=sub["hypervolume"], mode="lines+markers", name=str(g),
                        line={"shape": "hv", "color": cmap.get(g, "#888")},
                        customdata=sub[["trial_id"]].to_numpy(),
                        hovertemplate="after %{customdata[0]}<br>%{x:.3g}: %{y:.4f}<extra>" + str(g) + "</extra>")
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10}, title=title,
                      xaxis_title=x.replace("_", " "), yaxis_title="hypervolume")
    return fig


def parallel_figure(trials: pd.DataFrame, hp_cols: list[str], space: dict, colour: str, label: str) -> go.Figure:
    dims = []
    for col in hp_cols:
        name = col[len("hp_"):]
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
                        subplot_titles=[c[len("hp_"):] for c in hp_cols])
    for i, col in enumerate(hp_cols, start=1):
        fig.add_scatter(x=trials[col], y=trials[colour], mode="markers", row=1, col=i, showlegend=False,
                        marker={"color": tint, "size": 8}, customdata=trials[["trial_id"]].to_numpy(),
                        hovertemplate="%{customdata[0]}<br>%{x}: %{y:.3f}<extra></extra>")
        if space.get(col[len("hp_"):], {}).get("log"):
            fig.update_xaxes(type="log", row=1, col=i)
    fig.update_yaxes(title_text=label, tickformat=PCT, row=1, col=1)
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 70, "b": 10})
    return fig


def watch(root: str, stamp: tuple, every: float) -> None:
    """Poll the result files' fingerprint and redraw the whole page when it changes."""
    if every <= 0:
        return

    @st.fragment(run_every=every)
    def _poll():
        if data.fingerprint(root) != stamp:
            st.rerun(scope="app")

    _poll()


def show_problems(problems: list[data.Problem]) -> None:
    errors = [p for p in problems if p.level == "error"]
    warnings = [p for p in problems if p.level != "error"]
    for p in errors:
        st.error(f"**{p.experiment or 'results root'}**: {p.message}")
    if warnings:
        box = st.expander(f"{len(warnings)} note(s) about the result files", expanded=len(warnings) <= 3)
        for p in warnings:
            box.warning(f"**{p.experiment or 'results root'}**: {p.message}")


def sidebar(res: data.Results, refresh: float) -> tuple[list[str], str]:
    sb = st.sidebar
    sb.header("Results")
    sb.caption(f"`{res.root}`")
    hidden = sb.multiselect("Hide experiments", res.experiments, key="hidden")
    group = sb.radio("One front per", ["method", "experiment"], key="group", horizontal=True)
    sb.caption(f"Checks for new results every {refresh:g} s." if refresh > 0 else "Auto-refresh is off.")
    for exp in res.experiments:
        meta = res.meta.get(exp, {})
        with sb.expander(exp):
            st.json(data.experiment_summary(meta), expanded=False)
            space = data.search_space(meta)
            if space:
                st.caption("search space")
                st.json(space, expanded=False)
    return [e for e in res.experiments if e not in hidden], group


def details(res: data.Results, keys: list[tuple[str, str]]) -> None:
    if not keys:
        st.caption("Click a point on the chart (shift-click for more, or the box and lasso tools of its toolbar), "
                   "or pick trials above, to see their "
                   "hyperparameters, per-attack accuracies and gradient-masking flags.")
        return
    st.markdown(f"**{len(keys)} trial(s) selected**")
    searched = set()
    for exp in {e for e, _ in keys}:
        searched |= set(data.search_space(res.meta.get(exp, {})))
    hp = data.hyperparameters(res.trials, keys, searched)
    left, right = st.columns([2, 3])
    with left:
        st.markdown("Hyperparameters")
        st.dataframe(hp.astype(str), width="stretch")
        flags = data.masking_flags(res.trials, res.evals, keys)
        st.markdown("Gradient-masking flags")
        for rec in flags.itertuples():
            for f in rec.flags:
                st.warning(f"{rec.trial}: {f}")
            if not rec.flags:
                st.caption(f"{rec.trial}: " + {
                    "evaluator": "none (final evaluation's checks)",
                    "dashboard": "none (dashboard checks: gradient-free beating gradient attacks, attack above clean)",
                }.get(rec.checked_by, "not checked: no final evaluation of this trial"))
    with right:
        acc = data.attack_accuracies(res.evals, keys)
        if acc.empty:
            st.info("No per-attack results for these trials.")
        else:
            shown = acc[acc["trial"].isin(acc["trial"].unique()[:MAX_BARS])]
            stages = ", ".join(sorted(set(shown["stage"])))
            st.markdown(f"Accuracy per attack ({stages} stage)")
            st.plotly_chart(attack_bars(shown), key="attack_bars")


def tab_front(res: data.Results, table: pd.DataFrame, group: str, cmap: dict, view: data.View) -> None:
    pts = table.dropna(subset=["clean", "robust"])
    chosen: list[tuple[str, str]] = []
    if pts.empty:
        st.info(f"No trial has a result under “{view.label}” yet.")
    else:
        fig = front_figure(table, group, cmap, view.label)
        event = st.plotly_chart(fig, key="front_chart", on_select="rerun", selection_mode=("points", "box", "lasso"))
        chosen = data.selected_keys(_points(event))
        hv = data.hypervolumes(pts, group)
        cols = st.columns(min(len(hv), 6))
        for i, (g, v) in enumerate(sorted(hv.items())):
            front = int(pts.loc[pts[group] == g, "on_front"].sum())
            cols[i % len(cols)].metric(f"hypervolume · {g}", f"{v:.4f}", help="area dominated by the front, from (0, 0)",
                                       delta=f"{front} on front / {int((pts[group] == g).sum())}", delta_color="off",
                                       delta_arrow="off")
    labels = {data.label(e, t): (e, t) for e, t in res.trials[data.KEY].itertuples(index=False)}
    picked = st.multiselect("Inspect trials", sorted(labels), key="inspect")
    keys = chosen + [labels[p] for p in picked if labels[p] not in chosen]
    details(res, keys)


def _points(event) -> list:
    try:
        return list(event["selection"]["points"])
    except (KeyError, TypeError):
        return []


def tab_seen_unseen(res: data.Results, group: str, cmap: dict) -> None:
    su = data.seen_unseen(res.trials, res.evals)
    if su.empty:
        st.info("No final evaluation yet. After the search the full attack suite (seen and unseen attacks) "
                "runs on the Pareto candidates; this tab fills in when its rows appear in evals.parquet.")
        return
    left, right = st.columns(2)
    with left:
        fig = go.Figure()
        for g, sub in su.groupby(group, sort=True):
            fig.add_scatter(x=sub[data.WORST_SEEN], y=sub[data.UNION_UNSEEN], mode="markers", name=str(g),
                            marker={"color": cmap.get(g, "#888"), "size": 10},
                            customdata=sub[["trial_id", "retained"]].to_numpy(),
                            hovertemplate="%{customdata[0]}<br>seen %{x:.3f} → unseen %{y:.3f}"
                                          "<br>retained %{customdata[1]:.0%}<extra></extra>")
        top = float(su[[data.WORST_SEEN, data.UNION_UNSEEN]].max().max()) * 1.05 or 1.0
        fig.add_scatter(x=[0, top], y=[0, top], mode="lines", line={"dash": "dot", "color": "grey"},
                        name="unseen = seen", hoverinfo="skip")
        fig.update_layout(height=420, title="Robustness per trial: seen vs unseen",
                          xaxis={"title": "worst case over seen attacks", "tickformat": PCT},
                          yaxis={"title": "union over unseen attacks", "tickformat": PCT},
                          margin={"l": 10, "r": 10, "t": 40, "b": 10})
        st.plotly_chart(fig, key="seen_unseen_scatter")
    with right:
        bars = su.dropna(subset=["retained"]).sort_values("retained", ascending=False)
        fig = go.Figure()
        for g, sub in bars.groupby(group, sort=True):
            fig.add_bar(x=sub["trial_id"], y=sub["retained"], name=str(g), marker_color=cmap.get(g, "#888"),
                        hovertemplate="%{x}: %{y:.0%} of its seen robustness survives<extra></extra>")
        fig.update_layout(height=420, title="Seen robustness kept under unseen",
                          yaxis={"tickformat": ".0%", "title": "union_unseen / worst_seen"},
                          xaxis={"categoryorder": "array", "categoryarray": bars["trial_id"].tolist()},
                          margin={"l": 10, "r": 10, "t": 40, "b": 10})
        st.plotly_chart(fig, key="retained_bars")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=["clean vs worst case over seen", "clean vs union over unseen"])
    tables = [data.with_front(data.objectives(res.trials, res.evals, view), group)
              for view in (data.WORST_SEEN, data.UNION_UNSEEN)]
    both = pd.concat(tables)
    for i, table in enumerate(tables, start=1):
        add_front(fig, table, group, cmap, row=1, col=i, legend=i == 1)
        fig.update_xaxes(title_text="clean accuracy", tickformat=PCT, range=span(both["clean"]), row=1, col=i)
    fig.update_yaxes(title_text="robust accuracy", tickformat=PCT, range=span(both["robust"]), row=1, col=1)
    fig.update_layout(height=440, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    st.markdown("Each front under seen and under unseen attacks")
    st.plotly_chart(fig, key="seen_unseen_fronts")


def tab_hypervolume(table: pd.DataFrame, group: str, cmap: dict, view: data.View) -> None:
    curve = data.hypervolume_curve(table, group)
    if curve.empty:
        st.info("No finished trial yet.")
        return
    st.caption(f"Hypervolume of each front (clean × {view.label}, reference point (0, 0)) after each finished "
               "trial in completion order; failed trials count towards trials and device-hours.")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(curve_figure(curve, "n_trials", group, cmap, "against trials"), key="hv_trials")
    with right:
        st.plotly_chart(curve_figure(curve, "device_hours", group, cmap, "against device-hours"), key="hv_hours")


def tab_trials(res: data.Results, table: pd.DataFrame) -> None:
    full = data.trial_table(res.trials, table)
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    methods = c1.multiselect("Methods", sorted(full["method"].unique()), key="f_methods")
    statuses = c2.multiselect("Status", sorted(full["status"].unique()), key="f_status")
    min_robust = c3.slider("Robust accuracy at least", 0.0, 1.0, 0.0, 0.01, key="f_robust")
    sort_by = c4.selectbox("Sort by", ["robust", "clean", "finished_at", "device_s", "trial_id"] +
                           data.hp_columns(full), key="f_sort")
    c5, c6, _ = st.columns([2, 2, 4])
    front_only = c5.checkbox("On a front only", key="f_front")
    descending = c6.checkbox("Descending", value=True, key="f_desc")
    shown = data.filter_trials(full, methods, statuses, front_only, min_robust, sort_by, descending)
    st.caption(f"{len(shown)} of {len(full)} trials")
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("clean", "robust")})
    st.download_button("Download CSV", data.to_csv(shown), file_name="trials.csv", mime="text/csv", key="csv")


def tab_hyperparameters(res: data.Results, table: pd.DataFrame, cmap: dict, view: data.View) -> None:
    methods = sorted(m for m in res.trials["method"].unique()
                     if any(res.trials.loc[res.trials["method"] == m, c].notna().any() for c in data.hp_columns(res.trials)))
    if not methods:
        st.info("No hyperparameter columns (hp_*) in trials.parquet.")
        return
    c1, c2 = st.columns(2)
    method = c1.selectbox("Method", methods, key="hp_method")
    colour = c2.selectbox("Colour by", ["robust", "clean"], key="hp_colour",
                          format_func=lambda c: f"{c} accuracy ({view.label})")
    trials = res.trials[res.trials["method"] == method]
    merged = trials.merge(table[data.KEY + ["clean", "robust"]], on=data.KEY, how="left").dropna(subset=[colour])
    if merged.empty:
        st.info(f"No {method} trial has a result under “{view.label}” yet.")
        return
    space = {}
    for exp in merged["experiment"].unique():
        space.update(data.search_space(res.meta.get(exp, {})))
    hp_cols = data.searched_columns(merged, space)
    if not hp_cols:
        st.info(f"The {method} trials shown do not differ in any hyperparameter.")
        return
    st.caption("Searched knobs: " + ", ".join(c[len("hp_"):] for c in hp_cols)
               + ("" if space else " (no search space in experiment.json: knobs that vary across trials)"))
    label = f"{colour} acc."
    st.plotly_chart(parallel_figure(merged, hp_cols, space, colour, label), key="hp_parallel")
    st.plotly_chart(slice_figure(merged, hp_cols, space, colour, label, cmap.get(method, "#636efa")), key="hp_slices")


def main() -> None:
    import sys

    st.set_page_config(page_title="raysearch fronts", layout="wide")
    try:
        args = parse_args(sys.argv[1:])
    except argparse.ArgumentError as exc:
        st.error(f"Bad dashboard argument: {exc}. Usage: streamlit run dashboard/app.py -- --results <root> [--refresh s]")
        return
    st.title("raysearch — clean vs robust Pareto fronts")
    stamp = data.fingerprint(args.results)
    try:
        res = load(args.results, stamp)
    except data.RootError as exc:
        st.error(f"Cannot read results: {exc}.")
        st.caption("Start a search with `python -m raysearch.tune --method pgd_at` or pass "
                   "`-- --results <folder>` to `streamlit run dashboard/app.py`.")
        watch(args.results, stamp, args.refresh)
        return
    show_problems(res.problems)
    if not res.experiments:
        st.info(f"No experiments with trials under `{res.root}` yet. Each experiment is a folder with "
                "trials.parquet, evals.parquet and experiment.json, written while a search runs.")
        watch(args.results, stamp, args.refresh)
        return
    shown, group = sidebar(res, args.refresh)
    cmap = colours(res.trials[group])  # from every experiment, so hiding one keeps the others' colours
    res = data.Results(root=res.root, experiments=shown, meta=res.meta, problems=res.problems,
                       trials=res.trials[res.trials["experiment"].isin(shown)],
                       evals=res.evals[res.evals["experiment"].isin(shown)] if len(res.evals) else res.evals)
    counts = res.trials["status"].value_counts()
    st.caption(f"{len(shown)} experiment(s) · {len(res.trials)} trials ("
               + ", ".join(f"{n} {s or 'unknown'}" for s, n in counts.items())
               + f") · read at {time.strftime('%H:%M:%S')}")
    if res.trials.empty:
        st.info("No trials to show.")
        watch(args.results, stamp, args.refresh)
        return
    options = {v.key: v for v in data.views(res.evals)}
    if st.session_state.get("view") not in options:
        st.session_state["view"] = data.PROXY  # the final rows it named are gone (experiment hidden)
    key = st.selectbox("Robust accuracy under", list(options), key="view", format_func=lambda k: options[k].label,
                       help="The search's per-epoch proxy, or the final attack suite (after the search).")
    view = options[key]
    table = data.with_front(data.objectives(res.trials, res.evals, view.key), group)
    tabs = st.tabs(["Pareto front", "Seen vs unseen", "Hypervolume", "Trials", "Hyperparameters"])
    with tabs[0], guarded("the Pareto front"):
        tab_front(res, table, group, cmap, view)
    with tabs[1], guarded("seen vs unseen"):
        tab_seen_unseen(res, group, cmap)
    with tabs[2], guarded("the hypervolume curves"):
        tab_hypervolume(table, group, cmap, view)
    with tabs[3], guarded("the trial table"):
        tab_trials(res, table)
    with tabs[4], guarded("the hyperparameter effects"):
        tab_hyperparameters(res, table, cmap, view)
    watch(args.results, stamp, args.refresh)


if __name__ == "__main__":
    main()
