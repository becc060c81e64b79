"""Robustness curves from the final evaluation's rows: the L∞ radii it covered, its rows at one
radius read as if that radius were ε_eval (so that a seen-attack view's front can be drawn
there), and per selected trial the worst case over seen attacks against ε. Pure pandas.

With ``--eps-list`` the final evaluation runs the seen attacks again at further radii and
stores them as ``<attack>@<radius>`` rows (``raysearch.schema.curve_attack``: ``pgd_ce@0.1``,
``worst_seen@0.1``) with the radius in ``eps``; plain names are the ε_eval results, the only
ones :func:`dashboard.views.final_rows` keeps. Radii are on the [0, 1] pixel scale.
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from dashboard.details import label
from dashboard.load import KEY
from dashboard.views import ACCURACY, CLEAN, ROBUST, WORST_SEEN, attack_rows, final_rows, is_curve, objectives
from raysearch.schema import CURVE_MARK, Stage, Threat

CURVE_WORST = WORST_SEEN + CURVE_MARK  # prefix of the curve's per-radius worst case rows
POINT_CLEAN, POINT_EPS_EVAL, POINT_RADIUS = "clean", "eps_eval", "radius"  # the points of a curve


def _tag(radius: float) -> str:
    """A radius as the evaluator writes it into a row's name."""
    return f"{radius:g}"


def _curve_rows(evals: pd.DataFrame) -> pd.DataFrame:
    if evals.empty:
        return evals
    fin = evals[(evals["stage"] == Stage.FINAL) & evals["accuracy"].notna()]
    return fin[is_curve(fin)]


def radii(evals: pd.DataFrame) -> list[float]:
    """The radii, other than ε_eval, that some trial's final evaluation covered, ascending."""
    rows = _curve_rows(evals)
    if rows.empty:
        return []
    worst = rows[rows["attack"].str.startswith(CURVE_WORST)]
    return sorted({float(e) for e in worst["eps"] if pd.notna(e)})


def applies(view: str, evals: pd.DataFrame) -> bool:
    """Whether ``view`` (a :class:`dashboard.views.View` key) has a value at other radii: the
    worst case over seen attacks, one seen attack, or one family of seen attacks."""
    if view == WORST_SEEN:
        return True
    kind, _, name = view.partition(":")
    seen = attack_rows(final_rows(evals))
    seen = seen[seen["threat"] == Threat.SEEN]
    return (kind == "attack" and name in set(seen["attack"])) or (kind == "family" and name in set(seen["family"]))


def eps_eval(trials: pd.DataFrame, evals: pd.DataFrame) -> pd.Series:
    """Each trial's ε_eval, indexed by KEY: trials.parquet's, else the budget of its seen
    attacks' final rows."""
    stored = trials.set_index(KEY)["eps_eval"] if len(trials) else pd.Series(dtype=float)
    stored = stored[stored > 0]
    seen = attack_rows(final_rows(evals))
    budgets = seen[seen["threat"] == Threat.SEEN].groupby(KEY)["eps"].median()
    return stored.combine_first(budgets).dropna()


def at_radius(trials: pd.DataFrame, evals: pd.DataFrame, radius: float) -> pd.DataFrame:
    """The final rows as an evaluation with ε_eval = ``radius`` would have written them: the
    clean rows, and the seen attacks at ``radius`` under their plain names (a trial's curve rows
    at that radius, or its own rows where its ε_eval is that radius). Unseen attacks and checks,
    which are not run per radius, are left out; a trial evaluated at neither has no seen row."""
    fin = final_rows(evals)
    if fin.empty:
        return fin
    here = _curve_rows(evals)
    if len(here):
        parts = here["attack"].str.rpartition(CURVE_MARK)  # columns: name, mark, radius as named
        here = here[parts[2] == _tag(radius)].assign(attack=parts[0])
    at_eval = eps_eval(trials, evals)
    same = at_eval[at_eval.map(_tag) == _tag(radius)].index
    seen = fin[fin["threat"] == Threat.SEEN]
    seen = seen[pd.MultiIndex.from_frame(seen[KEY]).isin(same)] if len(seen) else seen
    return pd.concat([fin[fin["threat"] == Threat.CLEAN], seen, here], ignore_index=True)


def objectives_at(trials: pd.DataFrame, evals: pd.DataFrame, view: str, radius: float) -> pd.DataFrame:
    """:func:`dashboard.views.objectives` of a seen-attack ``view`` at ``radius`` (from the
    rows at that radius alone: the trials' final summary is at ε_eval)."""
    return objectives(trials, at_radius(trials, evals, radius), view, summary=False)


def label_at(label: str, radius: float) -> str:
    """A view's label with the radius, before its parenthesis: "Worst case ... at ε = 0.1 (final)"."""
    head, paren, tail = label.partition(" (")
    return f"{head} at ε = {_tag(radius)}{paren}{tail}"


def curves(trials: pd.DataFrame, evals: pd.DataFrame, keys: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """One row per point of each selected trial's robustness curve, by increasing ε: clean
    accuracy at ε = 0 (``point`` "clean"), the worst case over seen attacks at its ε_eval
    ("eps_eval") and at each further radius the final evaluation covered ("radius"), each with
    its 95% interval. Trials without a final evaluation have no points."""
    cols = ["trial", "experiment", "trial_id", "eps", *ACCURACY, "point"]
    keys = list(dict.fromkeys(keys))
    if not keys or trials.empty:
        return pd.DataFrame(columns=cols)
    at_eval = objectives(trials, evals, WORST_SEEN).set_index(KEY)
    budgets = eps_eval(trials, evals)
    curve = _curve_rows(evals)
    curve = curve[curve["attack"].str.startswith(CURVE_WORST)] if len(curve) else curve
    rows = []
    for key in keys:
        if key not in at_eval.index or pd.isna(at_eval.loc[key, "robust"]):
            continue
        trial = label(*key)
        rows.append((trial, *key, 0.0, *at_eval.loc[key, CLEAN].astype(float), POINT_CLEAN))
        rows.append((trial, *key, float(budgets.get(key, math.nan)), *at_eval.loc[key, ROBUST].astype(float),
                     POINT_EPS_EVAL))
        mine = curve[(curve["experiment"] == key[0]) & (curve["trial_id"] == key[1])] if len(curve) else curve
        mine = mine.reindex(columns=["eps", *ACCURACY])  # NaN intervals for rows not read through the store
        rows += [(trial, *key, *map(float, values), POINT_RADIUS) for values in mine.itertuples(index=False)]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["trial", "eps"], kind="stable", ignore_index=True) if len(out) else out
