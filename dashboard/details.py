"""What the page shows about selected trials: which trials a chart selection names, their
hyperparameters, their accuracy per attack, their gradient-masking flags and the counts of the
final evaluation's masking checks."""
from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from dashboard.load import KEY
from dashboard.masking import checks, flag_list
from dashboard.views import ACCURACY, attack_rows, clean_accuracy, final_rows, is_aggregate, is_curve
from raysearch.schema import HP_PREFIX, Stage, Threat, hp_columns

THREAT_ORDER = {Threat.CLEAN: 0, Threat.SEEN: 1, Threat.UNSEEN: 2}  # checks and the rest after these
GRADIENT_FREE = "square"  # the family of the suite's gradient-free attack
CHECK_COLUMNS = ["trial", "check", "count", "n", "limit", "fired", "what"]  # masking_checks' table


def label(experiment: str, trial_id: str) -> str:
    return f"{experiment} / {trial_id}"


def selected_keys(points: Iterable[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """(experiment, trial_id) of the points of a Plotly selection event whose ``customdata``
    starts with them, in order, without repeats."""
    out: list[tuple[str, str]] = []
    for p in points or []:
        cd = p.get("customdata") if isinstance(p, dict) else None
        if isinstance(cd, (list, tuple)) and len(cd) >= 2:
            key = (str(cd[0]), str(cd[1]))
            if key not in out:
                out.append(key)
    return out


def _subset(frame: pd.DataFrame, keys: Iterable[tuple[str, str]]) -> pd.DataFrame:
    keys = list(keys)
    if frame.empty or not keys:
        return frame.iloc[:0]
    idx = pd.MultiIndex.from_frame(frame[KEY])
    return frame[idx.isin(keys)]


def hyperparameters(trials: pd.DataFrame, keys: Iterable[tuple[str, str]],
                    searched: Iterable[str] = ()) -> pd.DataFrame:
    """Rows: hyperparameters (without the ``hp_`` prefix), the ``searched`` knobs first, then
    the fixed config fields; columns: the selected trials. A knob only other methods have (NaN
    for all selected trials) is left out."""
    sub = _subset(trials, keys)
    searched = set(searched)
    cols = [c for c in hp_columns(sub.columns) if sub[c].notna().any()]
    cols.sort(key=lambda c: c.removeprefix(HP_PREFIX) not in searched)  # stable: searched first
    table = sub.set_index(sub.apply(lambda r: label(r["experiment"], r["trial_id"]), axis=1))[["method"] + cols]
    table.columns = ["method"] + [c.removeprefix(HP_PREFIX) for c in cols]
    return table.T.astype(object).map(_display)


def _display(v: Any) -> Any:
    """Whole floats as ints (an int knob turns float beside another method's NaN), others to
    4 significant digits, missing as ''."""
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return int(v) if v.is_integer() else float(f"{v:.4g}")
    return v


def attack_accuracies(evals: pd.DataFrame, keys: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Long table (trial, attack, threat, accuracy with its 95% interval, stage) for the
    selected trials: their final rows at ε_eval where they have some (the robustness curve is
    :func:`dashboard.curves.curves`), else the per-epoch rows of their last epoch."""
    sub = _subset(evals, keys)
    sub = sub[sub["accuracy"].notna()] if len(sub) else sub
    parts = []
    for key, grp in sub.groupby(KEY):
        fin = grp[(grp["stage"] == Stage.FINAL) & ~is_curve(grp)]
        if fin.empty:
            fin = grp[grp["stage"] == Stage.TRIAL]
            fin = fin[fin["epoch"] == fin["epoch"].max()]
        parts.append(fin.assign(trial=label(*key)))
    cols = ["trial", "attack", "threat", "family", *ACCURACY, "stage", "epoch", "aggregate"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    out["aggregate"] = is_aggregate(out)
    out["_o"] = out["threat"].map(THREAT_ORDER).fillna(3) + out["aggregate"] * 0.5
    # reindex: rows without interval columns (not read through the store) get NaN ones
    return out.sort_values(["trial", "_o", "attack"]).reindex(columns=cols).reset_index(drop=True)


def _evaluator_flags(trials: pd.DataFrame, key: tuple[str, str]) -> list[str] | None:
    """The final evaluation's own flags for ``key``; None where it did not check the trial. It
    writes ``masking_flags`` ('' when clean) together with ``final_clean_acc``, so a trial
    without a final clean accuracy and without flags was not checked."""
    if "masking_flags" not in trials:
        return None
    rows = trials[(trials["experiment"] == key[0]) & (trials["trial_id"] == key[1])]
    evaluated = rows["final_clean_acc"].notna() if "final_clean_acc" in rows else pd.Series(False, index=rows.index)
    for flags, checked in zip(rows["masking_flags"], evaluated):
        if checked or flag_list(flags):
            return flag_list(flags)
    return None


def masking_flags(trials: pd.DataFrame, evals: pd.DataFrame, keys: Iterable[tuple[str, str]],
                  tolerance: float = 0.02) -> pd.DataFrame:
    """Gradient-masking warnings per selected trial, and who checked (``checked_by``:
    "evaluator", "dashboard", or "" for a trial without final rows): the evaluator's own
    ``masking_flags`` (trials.parquet, ';'-joined) where the final evaluation checked the trial.
    Any other trial gets two checks on its final rows instead: a gradient-free attack (family
    ``square``) scoring below every other seen attack, and an attack scoring above clean
    accuracy (``tolerance`` in accuracy, absorbing sampling noise)."""
    keys = list(keys)
    rows = []
    tsub = _subset(trials, keys)
    esub = _subset(evals, keys)
    for key in keys:
        stored = _evaluator_flags(tsub, key)
        if stored is not None:
            rows.append({"trial": label(*key), "flags": stored, "checked_by": "evaluator"})
            continue
        flags: list[str] = []
        grp = esub[(esub["experiment"] == key[0]) & (esub["trial_id"] == key[1])] if len(esub) else esub
        fin = final_rows(grp) if len(grp) else grp
        if len(fin):
            attacks = attack_rows(fin)
            seen = attacks[attacks["threat"] == Threat.SEEN]
            free = seen[seen["family"] == GRADIENT_FREE]["accuracy"]
            grad = seen[seen["family"] != GRADIENT_FREE]["accuracy"]
            if len(free) and len(grad) and free.min() < grad.min() - tolerance:
                flags.append(f"check: gradient-free attack ({free.min():.3f}) beats every gradient attack "
                             f"({grad.min():.3f}), a sign of gradient masking")
            clean = clean_accuracy(fin)
            if len(clean) and len(attacks) and attacks["accuracy"].max() > clean.max() + tolerance:
                worst = attacks.loc[attacks["accuracy"].idxmax()]
                flags.append(f"check: {worst['attack']} accuracy {worst['accuracy']:.3f} exceeds clean "
                             f"accuracy {clean.max():.3f}")
        rows.append({"trial": label(*key), "flags": flags, "checked_by": "dashboard" if len(fin) else ""})
    return pd.DataFrame(rows, columns=["trial", "flags", "checked_by"])


def masking_checks(trials: pd.DataFrame, keys: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """One row per (selected trial, masking check) from ``masking_checks``: how many of the n
    images the check counted, the limit above which it fires, whether it fired and what it
    counts; fired checks first. Trials without checks (not evaluated, or evaluated before
    checks had counts) have no rows."""
    rows = []
    sub = _subset(trials, keys).reindex(columns=KEY + ["masking_checks"])
    for experiment, trial_id, value in sub.itertuples(index=False):
        for name, c in checks(value).items():
            rows.append({"trial": label(experiment, trial_id), "check": name, **c})
    out = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    return out.sort_values(["trial", "fired"], ascending=[True, False], kind="stable", ignore_index=True)
