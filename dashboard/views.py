"""The dashboard's objective views: which (clean, robust) pair each trial has under each view.

The objectives are accuracies in [0, 1], both maximized. The views:

* ``proxy`` — the per-epoch seen-attack proxy of the search (``trials.parquet`` clean_acc and
  robust_acc, i.e. evals stage ``trial`` at the last epoch), available for every trial; a cheap
  estimate on validation images that steers the search, so every label of it says "proxy";
* ``worst_seen`` / ``union_unseen`` — the final suite's aggregates: ``trials.parquet``
  final_clean_acc with final_worst_seen or final_union_unseen (the union over the unseen
  adversarial attacks; corruptions are reported apart), else evals stage ``final``. The page
  opens on ``worst_seen`` once a final evaluation exists (:func:`default_view`);
* ``attack:<name>`` — one attack of the final suite; ``family:<name>`` — the worst attack of
  one family. Final rows exist only for the trials the final evaluation covered (the Pareto
  candidates), and only once it has run.

Every view here is at each trial's ε_eval: the robustness curve's rows at other radii
(``<attack>@<radius>``, see ``raysearch.schema.curve_attack``) are left out of ``final_rows``;
:mod:`dashboard.curves` reads them.

Each objective comes with the 95% Wilson interval of the row it was taken from
(``clean_low``/``clean_high``, ``robust_low``/``robust_high``: the schema's interval columns,
NaN where the files hold none), so the figures can draw error bars.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from dashboard.load import KEY
from dashboard.masking import fired_text
from raysearch.schema import CURVE_MARK, Stage, Status, Threat, interval_names

PROXY = "proxy"
WORST_SEEN = "worst_seen"
UNION_UNSEEN = "union_unseen"
AGGREGATES = (WORST_SEEN, UNION_UNSEEN)
AGGREGATE_NORM = "mixed"  # the evaluator's norm of rows that summarize several attacks
FINAL_CLEAN = "final_clean_acc"
SUMMARY = {WORST_SEEN: "final_worst_seen", UNION_UNSEEN: "final_union_unseen"}  # trials.parquet's final summary
MASKING = "masking"  # objectives' column: what the masking checks flagged
CORRUPTION = "corruption"  # the family of natural corruptions: unseen, but no attack


def with_interval(name: str) -> list[str]:
    """``name`` and its interval columns (``<name>_low``, ``<name>_high``)."""
    return [name, *interval_names(name)]


ACCURACY = with_interval("accuracy")  # an evals row's accuracy and its interval
CLEAN, ROBUST = with_interval("clean"), with_interval("robust")  # the objectives and their intervals
FINAL_CLEAN_AXIS = "clean accuracy (final suite)"


@dataclass(frozen=True)
class View:
    key: str  # "proxy" | "worst_seen" | "union_unseen" | "attack:<name>" | "family:<name>"
    label: str  # the selector's text
    robust_axis: str = ""  # the robust axis' title; "": the label, starting lower case
    clean_axis: str = FINAL_CLEAN_AXIS

    @property
    def proxy(self) -> bool:
        return self.key == PROXY

    @property
    def robust_title(self) -> str:
        return self.robust_axis or self.label[:1].lower() + self.label[1:]


# The search's per-epoch estimate: worst of PGD-margin, PGD-CE and APGD-T per image, on validation images.
PROXY_VIEW = View(PROXY, "Proxy robust (PGD + APGD-T, per epoch)", "proxy robust accuracy (PGD + APGD-T, per epoch)",
                  "proxy clean accuracy (per epoch)")


def is_curve(rows: pd.DataFrame) -> pd.Series:
    """Robustness-curve rows: a seen attack or worst_seen at another radius than ε_eval."""
    return rows["attack"].fillna("").str.contains(CURVE_MARK, regex=False)


def final_rows(evals: pd.DataFrame) -> pd.DataFrame:
    """The final evaluation's rows at each trial's ε_eval (no robustness-curve rows)."""
    if evals.empty:
        return evals
    return evals[(evals["stage"] == Stage.FINAL) & evals["accuracy"].notna() & ~is_curve(evals)]


def is_aggregate(rows: pd.DataFrame) -> pd.Series:
    """Rows that summarize several attacks (per-image worst cases such as ``worst_seen``,
    ``union_unseen`` or ``worst_<family>``, means such as ``mean_corruption``): the evaluator
    stores them with norm ``"mixed"``."""
    return rows["attack"].isin(AGGREGATES) | (rows["norm"] == AGGREGATE_NORM) | rows["attack"].str.startswith("worst_")


def attack_rows(fin: pd.DataFrame) -> pd.DataFrame:
    """Single attacks (no aggregates, no clean, no sanity checks such as the ε sweep)."""
    return fin[fin["threat"].isin([Threat.SEEN, Threat.UNSEEN]) & ~is_aggregate(fin)]


def unseen_adversarial(attacks: pd.DataFrame) -> pd.Series:
    """Unseen attacks proper: the unseen threat without the natural corruptions, which are
    reported apart (the union over unseen attacks means the same for every method)."""
    return (attacks["threat"] == Threat.UNSEEN) & (attacks["family"] != CORRUPTION)


def _family_worst(fin: pd.DataFrame, families: list[str]) -> pd.Series:
    """The stored per-image worst cases of ``families``: their aggregate rows other than means
    (``worst_<family>``; the corruptions' ``union_corruptions``)."""
    return is_aggregate(fin) & fin["family"].isin(families) & ~fin["attack"].str.startswith("mean_")


def _extreme(rows: pd.DataFrame, highest: bool) -> pd.DataFrame:
    """Per trial (indexed by KEY) the row with the highest (else the lowest) accuracy: its
    accuracy and interval (NaN where the rows carry no interval)."""
    rows = rows[rows["accuracy"].notna()].reindex(columns=KEY + ACCURACY).reset_index(drop=True)
    if rows.empty:
        return pd.DataFrame(columns=ACCURACY, index=pd.MultiIndex.from_tuples([], names=KEY), dtype=float)
    accuracy = rows.groupby(KEY)["accuracy"]
    return rows.loc[(accuracy.idxmax() if highest else accuracy.idxmin()).to_numpy()].set_index(KEY)


def _first_of(preferred: pd.DataFrame, fallback: pd.DataFrame) -> pd.DataFrame:
    """``preferred``'s rows, and ``fallback``'s for the trials ``preferred`` lacks (whole rows,
    so an accuracy keeps its own interval)."""
    return pd.concat([preferred, fallback[~fallback.index.isin(preferred.index)]])


def _clean(rows: pd.DataFrame) -> pd.DataFrame:
    """Clean accuracy per trial with its interval: the ``clean`` row (not e.g. a randomized
    predictor's single-draw ``clean_per_draw``), else the best clean-threat row."""
    return _first_of(_extreme(rows[rows["attack"] == "clean"], True),
                     _extreme(rows[rows["threat"] == Threat.CLEAN], True))


def clean_accuracy(rows: pd.DataFrame) -> pd.Series:
    """Clean accuracy per trial: the ``clean`` row (not e.g. a randomized predictor's
    single-draw ``clean_per_draw``), else the best clean-threat row."""
    return _clean(rows)["accuracy"]


def _summarized(trials: pd.DataFrame | None, key: str) -> bool:
    """Whether some trial's final summary column of aggregate ``key`` holds a value."""
    return trials is not None and len(trials) > 0 and trials.get(SUMMARY[key], pd.Series(dtype=float)).notna().any()


def views(evals: pd.DataFrame, trials: pd.DataFrame | None = None) -> list[View]:
    """The objective views the data supports: the proxy always, the final ones once there are
    final rows (or, for the aggregates, final summaries in ``trials``)."""
    out = [PROXY_VIEW]
    fin = final_rows(evals)
    attacks = attack_rows(fin) if len(fin) else fin
    if _summarized(trials, WORST_SEEN) or len(fin) and (
            (fin["attack"] == WORST_SEEN).any() or (attacks["threat"] == Threat.SEEN).any()):
        out.append(View(WORST_SEEN, "Worst case over seen attacks (final)",
                        "worst case over seen attacks (final suite)"))
    if _summarized(trials, UNION_UNSEEN) or len(fin) and (
            (fin["attack"] == UNION_UNSEEN).any() or unseen_adversarial(attacks).any()):
        out.append(View(UNION_UNSEEN, "Union over unseen adversarial attacks (final)",
                        "union over unseen adversarial attacks (final suite)"))
    if fin.empty:
        return out
    families = attacks.groupby(["threat", "family"])["attack"].nunique()
    other = fin[is_aggregate(fin) & ~fin["attack"].isin(AGGREGATES)
                & ~_family_worst(fin, [f for _, f in families.index])]
    for name in sorted(other["attack"].unique()):
        out.append(View(f"attack:{name}", f"aggregate: {name}"))
    for threat in (Threat.SEEN, Threat.UNSEEN):
        for (_, fam), count in families[families.index.get_level_values(0) == threat].items():
            if count > 1 and fam:
                out.append(View(f"family:{fam}", f"{threat} family: {fam} (worst case over {count} attacks)"))
        for name in sorted(attacks.loc[attacks["threat"] == threat, "attack"].unique()):
            out.append(View(f"attack:{name}", f"{threat} attack: {name}"))
    return out


def default_view(options: list[View]) -> str:
    """The view the page opens on: the final suite's worst case over seen attacks where the
    shown experiments have one, else the proxy."""
    keys = [v.key for v in options]
    return WORST_SEEN if WORST_SEEN in keys else PROXY


def _as(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """An accuracy table (``ACCURACY`` columns) renamed to ``columns`` (e.g. ``CLEAN``)."""
    return table.rename(columns=dict(zip(ACCURACY, columns)))


def _proxy_from_evals(evals: pd.DataFrame) -> pd.DataFrame:
    """clean and seen accuracy, with their intervals (``CLEAN + ROBUST``), at each trial's last
    evaluated epoch of the trial stage, indexed by KEY."""
    ev = evals[(evals["stage"] == Stage.TRIAL) & evals["accuracy"].notna()] if len(evals) else evals
    if ev.empty:
        return pd.DataFrame(columns=CLEAN + ROBUST, index=pd.MultiIndex.from_tuples([], names=KEY), dtype=float)
    last = ev.groupby(KEY)["epoch"].transform("max")
    ev = ev[ev["epoch"] == last]
    return pd.concat([_as(_clean(ev), CLEAN), _as(_extreme(ev[ev["threat"] == Threat.SEEN], False), ROBUST)], axis=1)


def _final_robust(fin: pd.DataFrame, key: str) -> pd.DataFrame:
    attacks = attack_rows(fin)
    if key in AGGREGATES:
        direct = _extreme(fin[fin["attack"] == key], False)
        # Without the stored aggregate the worst single attack is used: for a per-image worst
        # case over attacks that is an upper bound.
        single = attacks[attacks["threat"] == Threat.SEEN] if key == WORST_SEEN else \
            attacks[unseen_adversarial(attacks)]
        return _first_of(direct, _extreme(single, False))
    kind, _, name = key.partition(":")
    if kind == "family":
        direct = _extreme(fin[_family_worst(fin, [name])], False)
        return _first_of(direct, _extreme(attacks[attacks["family"] == name], False))
    return _extreme(fin[fin["attack"] == name], False)


def _fill(out: pd.DataFrame, where: pd.Series, columns: list[str], values: pd.DataFrame) -> None:
    """Set ``columns`` of ``out``'s rows ``where`` from ``values`` (indexed by KEY), whole rows,
    so that an accuracy and its interval come from one measurement."""
    if where.any():
        picked = values.reindex(pd.MultiIndex.from_frame(out.loc[where, KEY]))
        for column in columns:
            out.loc[where, column] = picked[column].to_numpy(dtype=float)


def objectives(trials: pd.DataFrame, evals: pd.DataFrame, view: str = PROXY, summary: bool = True) -> pd.DataFrame:
    """One row per trial: key, method, status, ``clean`` and ``robust`` under ``view`` (NaN
    where the trial has no such measurement, e.g. failed trials or trials the final evaluation
    did not cover), each with the 95% interval of its measurement (``CLEAN``, ``ROBUST``),
    and ``masking``: what the final evaluation's gradient-masking checks flagged ('' if
    nothing, or not evaluated). Under the final aggregates the trial's own final summary
    (``final_clean_acc``, ``final_worst_seen``, ``final_union_unseen``) wins over the evals
    rows, unless ``summary`` is off (``evals`` then describe another radius than the summary's)."""
    cols = KEY + ["method", "status", "finished_at", "device_s"]
    if trials.empty:
        return pd.DataFrame(columns=cols + [MASKING] + CLEAN + ROBUST)
    out = trials[cols].copy()
    out[MASKING] = fired_text(trials).to_numpy()
    search_time = trials.reindex(columns=with_interval("clean_acc") + with_interval("robust_acc"))
    search_time.index = out.index
    if view == PROXY:
        # The trial's own summary wins; the per-epoch rows fill trials still running.
        for names, stored in ((CLEAN, "clean_acc"), (ROBUST, "robust_acc")):
            for name, column in zip(names, with_interval(stored)):
                out[name] = search_time[column].astype(float)
        proxy = _proxy_from_evals(evals)
        # A failed trial's partial epochs are not a result: it stays off the fronts.
        live = out["status"] != Status.FAILED
        _fill(out, out["clean"].isna() & live, CLEAN, proxy)
        _fill(out, out["robust"].isna() & live, ROBUST, proxy)
        return out
    for name in CLEAN + ROBUST:
        out[name] = math.nan
    fin = final_rows(evals)
    if len(fin):
        both = pd.concat([_as(_clean(fin), CLEAN), _as(_final_robust(fin, view), ROBUST)], axis=1)
        _fill(out, pd.Series(True, index=out.index), CLEAN + ROBUST, both)
    if summary and view in SUMMARY:
        _from_summary(out, trials, SUMMARY[view])
    # A trial with final attack rows but no final clean row falls back to its search-time clean accuracy.
    fallback = out["robust"].notna() & out["clean"].isna()
    for name, column in zip(CLEAN, with_interval("clean_acc")):
        out.loc[fallback, name] = search_time.loc[fallback, column]
    return out


def _from_summary(out: pd.DataFrame, trials: pd.DataFrame, robust: str) -> None:
    """Overwrite ``out``'s objectives with the trials' final summary where it holds ``robust``:
    the robust column and ``final_clean_acc``, each with its interval."""
    stored = trials.reindex(columns=with_interval(FINAL_CLEAN) + with_interval(robust)).astype(float)
    stored.index = out.index
    has = stored[robust].notna()
    for names, column in ((ROBUST, robust), (CLEAN, FINAL_CLEAN)):
        where = has & stored[column].notna()
        for name, source in zip(names, with_interval(column)):
            out.loc[where, name] = stored.loc[where, source]


def seen_unseen(trials: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Per trial with a final evaluation: clean, worst_seen, union_unseen (each with its
    interval) and ``retained``, the share of its seen-attack robustness that survives the
    unseen attacks (union_unseen / worst_seen; NaN where worst_seen is 0)."""
    seen = objectives(trials, evals, WORST_SEEN).rename(columns=dict(zip(ROBUST, with_interval(WORST_SEEN))))
    unseen = objectives(trials, evals, UNION_UNSEEN)[KEY + ROBUST].rename(
        columns=dict(zip(ROBUST, with_interval(UNION_UNSEEN))))
    out = seen.merge(unseen, on=KEY, how="left")
    out = out[out[WORST_SEEN].notna() | out[UNION_UNSEEN].notna()].reset_index(drop=True)
    ws = out[WORST_SEEN].where(out[WORST_SEEN] > 0)
    out["retained"] = out[UNION_UNSEEN] / ws
    return out
