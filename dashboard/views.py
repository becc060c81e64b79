"""The dashboard's objective views: which (clean, robust) pair each trial has under each view.

The objectives are accuracies in [0, 1], both maximized. The views:

* ``proxy`` — the per-epoch seen-attack proxy of the search (``trials.parquet`` clean_acc and
  robust_acc, i.e. evals stage ``trial`` at the last epoch), available for every trial;
* ``worst_seen`` / ``union_unseen`` — the final suite's aggregates (evals stage ``final``);
* ``attack:<name>`` — one attack of the final suite; ``family:<name>`` — the worst attack of
  one family. Final rows exist only for the trials the final evaluation covered (the Pareto
  candidates), and only once it has run.

Every view here is at each trial's ε_eval: the robustness curve's rows at other radii
(``<attack>@<radius>``, see ``raysearch.schema.curve_attack``) are left out of ``final_rows``;
:mod:`dashboard.curves` reads them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from dashboard.load import KEY
from raysearch.schema import CURVE_MARK, Stage, Status, Threat

PROXY = "proxy"
WORST_SEEN = "worst_seen"
UNION_UNSEEN = "union_unseen"
AGGREGATES = (WORST_SEEN, UNION_UNSEEN)
AGGREGATE_NORM = "mixed"  # the evaluator's norm of rows that summarize several attacks


@dataclass(frozen=True)
class View:
    key: str  # "proxy" | "worst_seen" | "union_unseen" | "attack:<name>" | "family:<name>"
    label: str


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


def clean_accuracy(rows: pd.DataFrame) -> pd.Series:
    """Clean accuracy per trial: the ``clean`` row (not e.g. a randomized predictor's
    single-draw ``clean_per_draw``), else the best clean-threat row."""
    named = rows[rows["attack"] == "clean"].groupby(KEY)["accuracy"].max()
    return named.combine_first(rows[rows["threat"] == Threat.CLEAN].groupby(KEY)["accuracy"].max())


def views(evals: pd.DataFrame) -> list[View]:
    """The objective views the data supports: the proxy always, the final ones once there are
    final rows."""
    out = [View(PROXY, "Per-epoch proxy (seen attack, last epoch)")]
    fin = final_rows(evals)
    if fin.empty:
        return out
    attacks = attack_rows(fin)
    if (fin["attack"] == WORST_SEEN).any() or (attacks["threat"] == Threat.SEEN).any():
        out.append(View(WORST_SEEN, "Worst case over seen attacks (final)"))
    if (fin["attack"] == UNION_UNSEEN).any() or (attacks["threat"] == Threat.UNSEEN).any():
        out.append(View(UNION_UNSEEN, "Union over unseen attacks (final)"))
    families = attacks.groupby(["threat", "family"])["attack"].nunique()
    other = fin[is_aggregate(fin) & ~fin["attack"].isin(AGGREGATES)
                & ~fin["attack"].isin([f"worst_{f}" for _, f in families.index])]
    for name in sorted(other["attack"].unique()):
        out.append(View(f"attack:{name}", f"aggregate: {name}"))
    for threat in (Threat.SEEN, Threat.UNSEEN):
        for (_, fam), count in families[families.index.get_level_values(0) == threat].items():
            if count > 1 and fam:
                out.append(View(f"family:{fam}", f"{threat} family: {fam} (worst case over {count} attacks)"))
        for name in sorted(attacks.loc[attacks["threat"] == threat, "attack"].unique()):
            out.append(View(f"attack:{name}", f"{threat} attack: {name}"))
    return out


def _proxy_from_evals(evals: pd.DataFrame) -> pd.DataFrame:
    """clean and seen accuracy at each trial's last evaluated epoch of the trial stage."""
    ev = evals[(evals["stage"] == Stage.TRIAL) & evals["accuracy"].notna()] if len(evals) else evals
    if ev.empty:
        return pd.DataFrame(columns=KEY + ["clean_proxy", "robust_proxy"])
    last = ev.groupby(KEY)["epoch"].transform("max")
    ev = ev[ev["epoch"] == last]
    clean = clean_accuracy(ev).rename("clean_proxy")
    robust = ev[ev["threat"] == Threat.SEEN].groupby(KEY)["accuracy"].min().rename("robust_proxy")
    return pd.concat([clean, robust], axis=1).reset_index()


def _final_robust(fin: pd.DataFrame, key: str) -> pd.Series:
    attacks = attack_rows(fin)
    if key in AGGREGATES:
        direct = fin[fin["attack"] == key].groupby(KEY)["accuracy"].min()
        # Without the stored aggregate the worst single attack is used: for a per-image worst
        # case over attacks that is an upper bound.
        threat = Threat.SEEN if key == WORST_SEEN else Threat.UNSEEN
        return direct.combine_first(attacks[attacks["threat"] == threat].groupby(KEY)["accuracy"].min())
    kind, _, name = key.partition(":")
    if kind == "family":
        direct = fin[fin["attack"] == f"worst_{name}"].groupby(KEY)["accuracy"].min()
        return direct.combine_first(attacks[attacks["family"] == name].groupby(KEY)["accuracy"].min())
    return fin[fin["attack"] == name].groupby(KEY)["accuracy"].min()


def objectives(trials: pd.DataFrame, evals: pd.DataFrame, view: str = PROXY) -> pd.DataFrame:
    """One row per trial: key, method, status, ``clean`` and ``robust`` under ``view`` (NaN
    where the trial has no such measurement, e.g. failed trials or trials the final evaluation
    did not cover)."""
    cols = KEY + ["method", "status", "finished_at", "device_s"]
    if trials.empty:
        return pd.DataFrame(columns=cols + ["clean", "robust"])
    out = trials[cols].copy()
    if view == PROXY:
        proxy = _proxy_from_evals(evals)
        out = out.merge(proxy, on=KEY, how="left") if len(proxy) else out.assign(clean_proxy=math.nan, robust_proxy=math.nan)
        # The trial's own summary wins; the per-epoch rows fill trials still running.
        out["clean"] = trials["clean_acc"].to_numpy()
        out["robust"] = trials["robust_acc"].to_numpy()
        # A failed trial's partial epochs are not a result: it stays off the fronts.
        live = out["status"] != Status.FAILED
        out["clean"] = out["clean"].fillna(out.pop("clean_proxy").where(live))
        out["robust"] = out["robust"].fillna(out.pop("robust_proxy").where(live))
        return out
    fin = final_rows(evals)
    if fin.empty:
        return out.assign(clean=math.nan, robust=math.nan)
    clean = clean_accuracy(fin).rename("clean")
    robust = _final_robust(fin, view).rename("robust")
    both = pd.concat([clean, robust], axis=1).reset_index()
    out["clean_acc"] = trials["clean_acc"].to_numpy()
    out = out.merge(both, on=KEY, how="left")
    # A trial with final attack rows but no final clean row falls back to its search-time clean accuracy.
    out["clean"] = out["clean"].where(out["robust"].isna(), out["clean"].fillna(out["clean_acc"]))
    out = out.drop(columns="clean_acc")
    return out


def seen_unseen(trials: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """Per trial with a final evaluation: clean, worst_seen, union_unseen and ``retained``, the
    share of its seen-attack robustness that survives the unseen attacks
    (union_unseen / worst_seen; NaN where worst_seen is 0)."""
    seen = objectives(trials, evals, WORST_SEEN).rename(columns={"robust": WORST_SEEN})
    unseen = objectives(trials, evals, UNION_UNSEEN)[KEY + ["robust"]].rename(columns={"robust": UNION_UNSEEN})
    out = seen.merge(unseen, on=KEY, how="left")
    out = out[out[WORST_SEEN].notna() | out[UNION_UNSEEN].notna()].reset_index(drop=True)
    ws = out[WORST_SEEN].where(out[WORST_SEEN] > 0)
    out["retained"] = out[UNION_UNSEEN] / ws
    return out
