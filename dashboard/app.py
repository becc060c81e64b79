"""The raysearch dashboard: clean-vs-robust Pareto fronts of one or many experiments.

    streamlit run dashboard/app.py -- --results ray_results/ [--refresh 5]

``--results`` is a results root (one folder per experiment, or one experiment folder); the page
reads nothing outside it. While a search runs, the page checks the result files' modification
times every ``--refresh`` seconds and redraws when they change (0 turns this off).

Layout only: the results come from :mod:`dashboard.load`, cached here on the files'
fingerprint so a redraw without new results reads nothing; every table from the pure functions
of the other ``dashboard`` modules, every chart from :mod:`dashboard.figures`.

Where the final evaluation ran with ``--eps-list``, a radius selector beside the view redraws
the fronts of seen-attack views at another radius, and the selected trials' details draw their
accuracy against ε.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from contextlib import contextmanager

import pandas as pd
import streamlit as st

from dashboard import curves, details, efficiency, figures, fronts, lineage, load, recorded, trial_table, views
from raysearch.schema import HP_PREFIX, hp_columns

logger = logging.getLogger("dashboard")

MAX_BARS = 8  # selected trials drawn in the per-attack chart; the tables show them all
EPS_EVAL = "eps_eval"  # the radius selector's default: each trial's own ε_eval


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dashboard/app.py", add_help=False, exit_on_error=False)
    p.add_argument("--results", default="ray_results", help="results root (experiment folders below it)")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between checks for new results; 0: off")
    args, _ = p.parse_known_args(argv)
    return args


@st.cache_data(show_spinner="Reading results…", max_entries=8)
def cached_results(root: str, stamp: tuple) -> load.Results:
    """``stamp`` is :func:`load.fingerprint`: new files, new cache entry."""
    return load.load_results(root)


@contextmanager
def guarded(what: str):
    """Show a failure of one section as a message and keep drawing the others."""
    try:
        yield
    except Exception as exc:  # any failure of a chart becomes a message on the page, the log keeps the trace
        logger.exception("could not show %s", what)
        st.error(f"Could not show {what}: {exc.__class__.__name__}: {exc}")


def watch(root: str, stamp: tuple, every: float) -> None:
    """Poll the result files' fingerprint and redraw the whole page when it changes."""
    if every <= 0:
        return

    @st.fragment(run_every=every)
    def _poll():
        if load.fingerprint(root) != stamp:
            st.rerun(scope="app")

    _poll()


def show_problems(problems: list[load.Problem]) -> None:
    errors = [p for p in problems if p.level == "error"]
    warnings = [p for p in problems if p.level != "error"]
    for p in errors:
        st.error(f"**{p.experiment or 'results root'}**: {p.message}")
    if warnings:
        box = st.expander(f"{len(warnings)} note(s) about the result files", expanded=len(warnings) <= 3)
        for p in warnings:
            box.warning(f"**{p.experiment or 'results root'}**: {p.message}")


def sidebar(res: load.Results, refresh: float) -> tuple[list[str], str]:
    sb = st.sidebar
    sb.header("Results")
    sb.caption(f"`{res.root}`")
    hidden = sb.multiselect("Hide experiments", res.experiments, key="hidden")
    group = sb.radio("One front per", ["method", "experiment"], key="group", horizontal=True)
    sb.caption(f"Checks for new results every {refresh:g} s." if refresh > 0 else "Auto-refresh is off.")
    for name in res.experiments:
        record = res.recorded.get(name, {})
        with sb.expander(name):
            st.json(recorded.experiment_summary(record), expanded=False)
            space = recorded.search_space(record)
            if space:
                st.caption("search space")
                st.json(space, expanded=False)
    return [e for e in res.experiments if e not in hidden], group


def show_details(res: load.Results, keys: list[tuple[str, str]]) -> None:
    if not keys:
        st.caption("Click a point on the chart (shift-click for more, or the box and lasso tools of its toolbar), "
                   "or pick trials above, to see their "
                   "hyperparameters, per-attack accuracies and gradient-masking flags.")
        return
    st.markdown(f"**{len(keys)} trial(s) selected**")
    searched = set()
    for name in {e for e, _ in keys}:
        searched |= set(recorded.search_space(res.recorded.get(name, {})))
    hp = details.hyperparameters(res.trials, keys, searched)
    left, right = st.columns([2, 3])
    with left:
        st.markdown("Hyperparameters")
        st.dataframe(hp.astype(str), width="stretch")
        flags = details.masking_flags(res.trials, res.evals, keys)
        st.markdown("Gradient-masking flags")
        for rec in flags.itertuples():
            for f in rec.flags:
                st.warning(f"{rec.trial}: {f}")
            if not rec.flags:
                st.caption(f"{rec.trial}: " + {
                    "evaluator": "none (final evaluation's checks)",
                    "dashboard": "none (dashboard checks: gradient-free beating gradient attacks, attack above clean)",
                }.get(rec.checked_by, "not checked: no final evaluation of this trial"))
        checks = details.masking_checks(res.trials, keys)
        if len(checks):
            st.markdown("Masking checks of the final evaluation: images showing the sign out of n, fired above "
                        "the limit that noise explains (what: what each counts)")
            st.dataframe(checks, hide_index=True, width="stretch", key="masking_checks")
        show_lineage(res, keys)
    with right:
        acc = details.attack_accuracies(res.evals, keys)
        if acc.empty:
            st.info("No per-attack results for these trials.")
        else:
            shown = acc[acc["trial"].isin(acc["trial"].unique()[:MAX_BARS])]
            stages = ", ".join(sorted(set(shown["stage"])))
            st.markdown(f"Accuracy per attack ({stages} stage; error bars: 95% Wilson intervals)")
            st.plotly_chart(figures.attack_bars(shown), key="attack_bars")
        curve = curves.curves(res.trials, res.evals, keys)
        if (curve["point"] == curves.POINT_RADIUS).any():
            st.plotly_chart(figures.robustness_curve_figure(curve), key="robustness_curve")
        elif len(curve):
            st.caption("No robustness curve for these trials: `python -m raysearch.evaluate --eps-list ...` "
                       "runs the seen attacks at further radii.")


def show_lineage(res: load.Results, keys: list[tuple[str, str]]) -> None:
    """Population-based training: which trials each selected one's weights descend from, at
    which epoch each clone happened and which hyperparameters it changed."""
    events = lineage.lineage(res.trials, keys)
    if events.empty:
        return
    st.markdown("Lineage (population-based training: clones of a better trial's checkpoint and hyperparameters)")
    st.dataframe(events, hide_index=True, width="stretch", key="lineage")
    for trial in dict.fromkeys(events["trial"]):
        st.caption(f"{trial}: weights from {lineage.chain(events, trial)}")


def tab_front(res: load.Results, table: pd.DataFrame, group: str, cmap: dict, view: views.View) -> None:
    pts = table.dropna(subset=["clean", "robust"])
    chosen: list[tuple[str, str]] = []
    if pts.empty:
        st.info(f"No trial has a result under “{view.label}” yet.")
    else:
        fig = figures.front_figure(table, group, cmap, view)
        event = st.plotly_chart(fig, key="front_chart", on_select="rerun", selection_mode=("points", "box", "lasso"))
        chosen = details.selected_keys(_points(event))
        notes = []
        if view.proxy:
            notes.append("Proxy: the search's cheap per-epoch estimate on validation images, not the final attack "
                         "suite.")
        if pts[[views.CLEAN[1], views.ROBUST[1]]].notna().any().any():
            notes.append("Error bars: 95% Wilson intervals, from each accuracy and the images it was measured on.")
        if pts[views.MASKING].astype(bool).any():
            notes.append("Diamonds: a gradient-masking check of the final evaluation fired (details below).")
        if notes:
            st.caption(" ".join(notes))
        hv = fronts.hypervolumes(pts, group)
        cols = st.columns(min(len(hv), 6))
        for i, (g, v) in enumerate(sorted(hv.items())):
            front = int(pts.loc[pts[group] == g, "on_front"].sum())
            cols[i % len(cols)].metric(f"hypervolume · {g}", f"{v:.4f}",
                                       help=f"area dominated by the front ({view.robust_title}), from (0, 0)",
                                       delta=f"{front} on front / {int((pts[group] == g).sum())}", delta_color="off",
                                       delta_arrow="off")
    labels = {details.label(e, t): (e, t) for e, t in res.trials[load.KEY].itertuples(index=False)}
    picked = st.multiselect("Inspect trials", sorted(labels), key="inspect")
    keys = chosen + [labels[p] for p in picked if labels[p] not in chosen]
    show_details(res, keys)


def _points(event) -> list:
    try:
        return list(event["selection"]["points"])
    except (KeyError, TypeError):
        return []


def tab_seen_unseen(res: load.Results, group: str, cmap: dict) -> None:
    su = views.seen_unseen(res.trials, res.evals)
    if su.empty:
        st.info("No final evaluation yet. After the search the full attack suite (seen and unseen attacks) "
                "runs on the Pareto candidates; this tab fills in when its rows appear in evals.parquet.")
        return
    left, right = st.columns(2)
    with left:
        st.plotly_chart(figures.seen_unseen_figure(su, group, cmap), key="seen_unseen_scatter")
    with right:
        st.plotly_chart(figures.retained_figure(su, group, cmap), key="retained_bars")
    tables = [fronts.with_front(views.objectives(res.trials, res.evals, view), group)
              for view in (views.WORST_SEEN, views.UNION_UNSEEN)]
    st.markdown("Each front under seen and under unseen attacks")
    st.plotly_chart(figures.seen_unseen_fronts_figure(tables, group, cmap), key="seen_unseen_fronts")


def tab_hypervolume(res: load.Results, table: pd.DataFrame, group: str, cmap: dict, view: views.View) -> None:
    curve = fronts.hypervolume_curve(table, group)
    if curve.empty:
        st.info("No finished trial yet.")
        return
    st.caption(f"Hypervolume of each front ({view.clean_axis} × {view.robust_title}, reference point (0, 0)) "
               "after each finished trial in completion order; failed trials count towards trials and device-hours.")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(figures.curve_figure(curve, "n_trials", group, cmap, "against trials"), key="hv_trials")
    with right:
        st.plotly_chart(figures.curve_figure(curve, "device_hours", group, cmap, "against device-hours"),
                        key="hv_hours")
    per_scheduler = efficiency.scheduler_curves(res.trials, res.evals, res.recorded)
    if len(per_scheduler):
        st.caption("Per experiment, labelled by its scheduler: the hypervolume of the trials finished so far "
                   "against the device-hours the search spent on them, under the proxy (per-epoch estimate) and, "
                   "where a final evaluation ran, under the final suite's worst case over seen attacks.")
        st.plotly_chart(figures.scheduler_figure(per_scheduler, figures.colours(per_scheduler["scheduler"])),
                        key="hv_schedulers")


def tab_trials(res: load.Results, table: pd.DataFrame, view: views.View) -> None:
    full = trial_table.trial_table(res.trials, table)
    c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
    methods = c1.multiselect("Methods", sorted(full["method"].unique()), key="f_methods")
    statuses = c2.multiselect("Status", sorted(full["status"].unique()), key="f_status")
    min_robust = c3.slider(("Proxy robust" if view.proxy else "Robust") + " accuracy at least", 0.0, 1.0, 0.0, 0.01,
                           key="f_robust")
    sort_by = c4.selectbox("Sort by", ["robust", "clean", "finished_at", "device_s", "trial_id"] +
                           hp_columns(full.columns), key="f_sort")
    c5, c6, _ = st.columns([2, 2, 4])
    front_only = c5.checkbox("On a front only", key="f_front")
    descending = c6.checkbox("Descending", value=True, key="f_desc")
    shown = trial_table.filter_trials(full, methods, statuses, front_only, min_robust, sort_by, descending)
    st.caption(f"{len(shown)} of {len(full)} trials")
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f", help=title) for c, title in
                                (("clean", view.clean_axis), ("robust", view.robust_title))})
    st.download_button("Download CSV", trial_table.to_csv(shown), file_name="trials.csv", mime="text/csv", key="csv")


def tab_hyperparameters(res: load.Results, table: pd.DataFrame, cmap: dict, view: views.View) -> None:
    methods = sorted(m for m in res.trials["method"].unique()
                     if any(res.trials.loc[res.trials["method"] == m, c].notna().any()
                            for c in hp_columns(res.trials.columns)))
    if not methods:
        st.info("No hyperparameter columns (hp_*) in trials.parquet.")
        return
    c1, c2 = st.columns(2)
    method = c1.selectbox("Method", methods, key="hp_method")
    colour = c2.selectbox("Colour by", ["robust", "clean"], key="hp_colour",
                          format_func=lambda c: view.robust_title if c == "robust" else view.clean_axis)
    trials = res.trials[res.trials["method"] == method]
    merged = trials.merge(table[load.KEY + ["clean", "robust"]], on=load.KEY, how="left").dropna(subset=[colour])
    if merged.empty:
        st.info(f"No {method} trial has a result under “{view.label}” yet.")
        return
    space = {}
    for name in merged["experiment"].unique():
        space.update(recorded.search_space(res.recorded.get(name, {})))
    hp_cols = recorded.searched_columns(merged, space)
    if not hp_cols:
        st.info(f"The {method} trials shown do not differ in any hyperparameter.")
        return
    st.caption("Searched knobs: " + ", ".join(c.removeprefix(HP_PREFIX) for c in hp_cols)
               + ("" if space else " (no search space in experiment.json: knobs that vary across trials)"))
    label = ("proxy " if view.proxy else "") + f"{colour} acc."
    st.plotly_chart(figures.parallel_figure(merged, hp_cols, space, colour, label), key="hp_parallel")
    st.plotly_chart(figures.slice_figure(merged, hp_cols, space, colour, label, cmap.get(method, "#636efa")),
                    key="hp_slices")


def pick_radius(slot, res: load.Results, view: views.View) -> float | None:
    """The L∞ radius the objectives are taken at: None for each trial's ε_eval (the default).
    Offered for the views of seen attacks once a final evaluation covered further radii."""
    radii = {f"{r:g}": r for r in curves.radii(res.evals)}
    if not radii or not curves.applies(view.key, res.evals):
        return None
    options = [EPS_EVAL] + list(radii)
    if st.session_state.get("radius") not in options:
        st.session_state["radius"] = EPS_EVAL  # the radius it named is gone (experiment hidden)
    picked = slot.selectbox("at L∞ radius", options, key="radius",
                            format_func=lambda r: "ε_eval (the search's)" if r == EPS_EVAL else f"ε = {r}",
                            help="Radii of the final evaluation's robustness curve (--eps-list).")
    return radii.get(picked)


def main() -> None:
    import sys

    st.set_page_config(page_title="raysearch fronts", layout="wide")
    try:
        args = parse_args(sys.argv[1:])
    except argparse.ArgumentError as exc:
        st.error(f"Bad dashboard argument: {exc}. Usage: streamlit run dashboard/app.py -- --results <root> [--refresh s]")
        return
    st.title("raysearch — clean vs robust Pareto fronts")
    stamp = load.fingerprint(args.results)
    try:
        res = cached_results(args.results, stamp)
    except load.RootError as exc:
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
    cmap = figures.colours(res.trials[group])  # from every experiment, so hiding one keeps the others' colours
    res = load.Results(root=res.root, experiments=shown, recorded=res.recorded, problems=res.problems,
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
    options = {v.key: v for v in views.views(res.evals, res.trials)}
    opening = views.default_view(list(options.values()))
    shown_view = st.session_state.get("view")
    if shown_view not in options or shown_view == st.session_state.get("view_auto"):
        # not the reader's choice: the final rows it named are gone (experiment hidden), or it was the
        # opening view and a final evaluation has finished since
        st.session_state["view"] = opening
    st.session_state["view_auto"] = opening
    left, right = st.columns([3, 1])
    key = left.selectbox("Robust accuracy under", list(options), key="view", format_func=lambda k: options[k].label,
                         help="The final attack suite (after the search; the default once it has run), or the "
                              "search's per-epoch proxy.")
    view = options[key]
    radius = pick_radius(right, res, view)
    if radius is None:
        table = fronts.with_front(views.objectives(res.trials, res.evals, view.key), group)
    else:
        table = fronts.with_front(curves.objectives_at(res.trials, res.evals, view.key, radius), group)
        view = dataclasses.replace(view, label=curves.label_at(view.label, radius),
                                   robust_axis=curves.label_at(view.robust_title, radius))
    tabs = st.tabs(["Pareto front", "Seen vs unseen", "Hypervolume", "Trials", "Hyperparameters"])
    with tabs[0], guarded("the Pareto front"):
        tab_front(res, table, group, cmap, view)
    with tabs[1], guarded("seen vs unseen"):
        tab_seen_unseen(res, group, cmap)
    with tabs[2], guarded("the hypervolume curves"):
        tab_hypervolume(res, table, group, cmap, view)
    with tabs[3], guarded("the trial table"):
        tab_trials(res, table, view)
    with tabs[4], guarded("the hyperparameter effects"):
        tab_hyperparameters(res, table, cmap, view)
    watch(args.results, stamp, args.refresh)


if __name__ == "__main__":
    main()
