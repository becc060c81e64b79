"""Pure loaders and tables behind the dashboard: no Streamlit, no plotting.

A results root holds one folder per experiment (``<root>/<name>/`` with ``trials.parquet``,
``evals.parquet`` and ``experiment.json``, see :mod:`raysearch.store`); several experiments are
read together so the fronts of different methods can be overlaid. The root may also be one
experiment folder itself.

Everything read lies below the resolved root: a folder or file whose resolved path (symlinks
followed) leaves the root is refused. Parquet is read with pyarrow and JSON with :mod:`json`;
nothing is unpickled. A missing, partial or corrupt file never raises: it becomes a
:class:`Problem` the page shows, and the rest of the root is still read.

The objectives are accuracies in [0, 1], both maximized. The dashboard's objective "views":

* ``proxy`` — the per-epoch seen-attack proxy of the search (``trials.parquet`` clean_acc and
  robust_acc, i.e. evals stage ``"trial"`` at the last epoch), available for every trial;
* ``worst_seen`` / ``union_unseen`` — the final suite's aggregates (evals stage ``"final"``);
* ``attack:<name>`` — one attack of the final suite; ``family:<name>`` — the worst attack of
  one family. Final rows exist only for the trials the final evaluation covered (the Pareto
  candidates), and only once it has run.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raysearch import store
from raysearch.pareto import hypervolume_2d, pareto_mask

logger = logging.getLogger(__name__)

FILES = (store.TRIALS, store.EVALS, store.EXPERIMENT)
PROXY = "proxy"
WORST_SEEN = "worst_seen"
UNION_UNSEEN = "union_unseen"
AGGREGATES = (WORST_SEEN, UNION_UNSEEN)
AGGREGATE_NORM = "mixed"
KEY = ["experiment", "trial_id"]

# Columns a reader can rely on after loading, with the value a file lacking them gets.
TRIAL_DEFAULTS: dict[str, Any] = {
    "method": "unknown", "dataset": "", "status": "", "error": "",
    "clean_acc": math.nan, "robust_acc": math.nan, "eps_eval": math.nan, "epochs": math.nan,
    "wall_s": math.nan, "device_s": math.nan, "started_at": math.nan, "finished_at": math.nan,
}
EVAL_DEFAULTS: dict[str, Any] = {
    "method": "unknown", "stage": "", "epoch": -1, "family": "", "threat": "", "norm": "",
    "eps": math.nan, "n": math.nan, "eot_samples": math.nan, "seconds": math.nan,
}
TRIAL_NUMERIC = ("clean_acc", "robust_acc", "eps_eval", "epochs", "wall_s", "device_s",
                 "started_at", "finished_at")
EVAL_NUMERIC = ("epoch", "eps", "accuracy", "n", "eot_samples", "seconds")
MAX_JSON_BYTES = 10_000_000  # experiment.json is a few kB; a bigger file is not ours


@dataclass(frozen=True)
class Problem:
    experiment: str  # "" for the root itself
    message: str
    level: str = "warning"  # "warning": shown beside the data; "error": the experiment is left out


@dataclass
class Results:
    root: Path
    experiments: list[str] = field(default_factory=list)  # those with readable trials
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


class RootError(ValueError):
    """The results root itself cannot be read; the message is one line for the page."""


# ---------------------------------------------------------------------------- paths


def resolve_root(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise RootError(f"results folder {str(path)!r} does not exist or cannot be read ({exc.__class__.__name__})") from None
    if not resolved.is_dir():
        raise RootError(f"results path {str(path)!r} is not a folder")
    return resolved


def inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved (symlinks followed) if it stays below ``root``, else None."""
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved == root or root in resolved.parents else None


def experiment_dirs(root: Path) -> tuple[dict[str, Path], list[Problem]]:
    """Experiment name -> folder for the folders of ``root`` holding any of the three result
    files (hidden folders such as the component cache are skipped). If the root holds the
    files itself it is taken as the only experiment."""
    root = resolve_root(root)
    if any((root / f).exists() for f in FILES):
        return {root.name: root}, []
    found, problems = {}, []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise RootError(f"cannot list results folder {str(root)!r}: {exc.strerror}") from None
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=True):
            continue
        folder = inside(root, root / entry.name)
        if folder is None:
            problems.append(Problem(entry.name, "skipped: the folder links outside the results root", "error"))
            continue
        if any((folder / f).exists() for f in FILES):
            found[entry.name] = folder
    return found, problems


def fingerprint(root: str | os.PathLike) -> tuple:
    """Cheap identity of everything the loaders read: (folder, file, mtime ns, size, inode)
    for each result file. It changes when a search rewrites a file (writes are renames), so
    a cache keyed by it picks up new trials and nothing else."""
    try:
        dirs, _ = experiment_dirs(root)
    except RootError as exc:
        return (("error", str(exc)),)
    out = []
    for name, folder in dirs.items():
        for f in FILES:
            try:
                st = os.stat(folder / f)
            except OSError:
                out.append((name, f, None))
                continue
            out.append((name, f, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


# ---------------------------------------------------------------------------- loading


def _read_parquet(root: Path, folder: Path, fname: str, exp: str) -> tuple[pd.DataFrame | None, Problem | None]:
    path = inside(root, folder / fname)
    if path is None:
        return None, Problem(exp, f"{fname}: skipped, it links outside the results root", "error")
    if not path.exists():
        return None, None
    try:
        frame = store.read_frame(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None, Problem(exp, f"{fname} is unreadable (corrupt or partly written): {_first_line(exc)}", "error")
    return frame, None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__


def _normalize(frame: pd.DataFrame, exp: str, defaults: dict[str, Any], numeric: Iterable[str]) -> pd.DataFrame:
    frame = frame.copy()
    for col, value in defaults.items():
        if col not in frame:
            frame[col] = value
    for col in numeric:
        if col in frame:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("method", "status", "stage", "attack", "family", "threat", "norm", "dataset", "error"):
        if col in frame:
            frame[col] = frame[col].astype(object).where(frame[col].notna(), defaults.get(col, "")).astype(str)
    frame["trial_id"] = frame["trial_id"].astype(str)
    # The folder name identifies the experiment: it is unique below the root, the stored
    # name need not be (a copied or renamed folder).
    frame["experiment"] = exp
    return frame


def load_experiment(root: Path, exp: str, folder: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None, dict[str, Any], list[Problem]]:
    problems: list[Problem] = []
    trials, p = _read_parquet(root, folder, store.TRIALS, exp)
    if p:
        problems.append(p)
    elif trials is None:
        problems.append(Problem(exp, "no trials.parquet yet: the search has not finished a trial", "warning"))
    if trials is not None:
        missing = [c for c in ("trial_id",) if c not in trials]
        if missing:
            problems.append(Problem(exp, f"trials.parquet lacks column(s) {', '.join(missing)}", "error"))
            trials = None
        else:
            version = trials["schema_version"].max() if "schema_version" in trials and len(trials) else store.SCHEMA_VERSION
            if pd.notna(version) and int(version) > store.SCHEMA_VERSION:
                problems.append(Problem(exp, f"trials.parquet has schema version {int(version)}, newer than this "
                                             f"dashboard's {store.SCHEMA_VERSION}; some columns may be ignored"))
            trials = _normalize(trials, exp, TRIAL_DEFAULTS, TRIAL_NUMERIC)
            if trials.empty:
                problems.append(Problem(exp, "trials.parquet holds no trials yet", "warning"))

    evals, p = _read_parquet(root, folder, store.EVALS, exp)
    if p:
        problems.append(Problem(exp, p.message + "; per-attack results are not shown", "warning"))
    elif evals is None and trials is not None and len(trials):
        problems.append(Problem(exp, "no evals.parquet: per-attack results are not shown", "warning"))
    if evals is not None:
        missing = [c for c in ("trial_id", "attack", "accuracy") if c not in evals]
        if missing:
            problems.append(Problem(exp, f"evals.parquet lacks column(s) {', '.join(missing)}; per-attack results are not shown"))
            evals = None
        else:
            evals = _normalize(evals, exp, EVAL_DEFAULTS, EVAL_NUMERIC)

    meta, p = read_meta(root, folder, exp)
    if p:
        problems.append(p)
    return trials, evals, meta, problems


def read_meta(root: Path, folder: Path, exp: str) -> tuple[dict[str, Any], Problem | None]:
    path = inside(root, folder / store.EXPERIMENT)
    if path is None:
        return {}, Problem(exp, "experiment.json: skipped, it links outside the results root")
    if not path.exists():
        return {}, Problem(exp, "no experiment.json: the search space and config are not shown")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return {}, Problem(exp, "experiment.json is too large to be an experiment record; ignored")
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, Problem(exp, f"experiment.json is unreadable: {_first_line(exc)}")
    if not isinstance(obj, dict):
        return {}, Problem(exp, "experiment.json is not a JSON object; ignored")
    return obj, None


def load_results(root: str | os.PathLike) -> Results:
    """Every experiment below ``root``, trials and evals concatenated (hyperparameter columns
    of other methods are NaN). Raises :class:`RootError` only for the root itself."""
    root = resolve_root(root)
    dirs, problems = experiment_dirs(root)
    res = Results(root=root, problems=list(problems))
    trial_frames, eval_frames = [], []
    for exp, folder in dirs.items():
        trials, evals, meta, probs = load_experiment(root, exp, folder)
        res.problems.extend(probs)
        res.meta[exp] = meta
        if trials is not None:
            res.experiments.append(exp)
            trial_frames.append(trials)
            if evals is not None:
                eval_frames.append(evals[evals["trial_id"].isin(set(trials["trial_id"]))] if len(trials) else evals.iloc[:0])
    res.trials = _concat(trial_frames, list(store.TRIAL_COLUMNS) + list(TRIAL_DEFAULTS))
    res.evals = _concat(eval_frames, list(store.EVAL_COLUMNS) + list(EVAL_DEFAULTS))
    return res


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c in TRIAL_NUMERIC + EVAL_NUMERIC else object)
                             for c in dict.fromkeys(columns + ["trial_id", "attack", "accuracy"])})
    return pd.concat(frames, ignore_index=True, sort=False)


# ---------------------------------------------------------------------------- views


@dataclass(frozen=True)
class View:
    key: str  # "proxy" | "worst_seen" | "union_unseen" | "attack:<name>" | "family:<name>"
    label: str


def final_rows(evals: pd.DataFrame) -> pd.DataFrame:
    if evals.empty:
        return evals
    return evals[(evals["stage"] == "final") & evals["accuracy"].notna()]


def is_aggregate(rows: pd.DataFrame) -> pd.Series:
    """Rows that summarize several attacks (per-image worst cases such as ``worst_seen``,
    ``union_unseen`` or ``worst_<family>``, means such as ``mean_corruption``): the evaluator
    stores them with norm ``"mixed"``."""
    return rows["attack"].isin(AGGREGATES) | (rows["norm"] == AGGREGATE_NORM) | rows["attack"].str.startswith("worst_")


def _attack_rows(fin: pd.DataFrame) -> pd.DataFrame:
    """Single attacks (no aggregates, no clean, no sanity checks such as the ε sweep)."""
    return fin[fin["threat"].isin(["seen", "unseen"]) & ~is_aggregate(fin)]


def views(evals: pd.DataFrame) -> list[View]:
    """The objective views the data supports: the proxy always, the final ones once there are
    final rows."""
    out = [View(PROXY, "Per-epoch proxy (seen attack, last epoch)")]
    fin = final_rows(evals)
    if fin.empty:
        return out
    attacks = _attack_rows(fin)
    if (fin["attack"] == WORST_SEEN).any() or (attacks["threat"] == "seen").any():
        out.append(View(WORST_SEEN, "Worst case over seen attacks (final)"))
    if (fin["attack"] == UNION_UNSEEN).any() or (attacks["threat"] == "unseen").any():
        out.append(View(UNION_UNSEEN, "Union over unseen attacks (final)"))
    families = attacks.groupby(["threat", "family"])["attack"].nunique()
    other = fin[is_aggregate(fin) & ~fin["attack"].isin(AGGREGATES)
                & ~fin["attack"].isin([f"worst_{f}" for _, f in families.index])]
    for name in sorted(other["attack"].unique()):
        out.append(View(f"attack:{name}", f"aggregate: {name}"))
    for threat in ("seen", "unseen"):
        for (_, fam), count in families[families.index.get_level_values(0) == threat].items():
            if count > 1 and fam:
                out.append(View(f"family:{fam}", f"{threat} family: {fam} (worst case over {count} attacks)"))
        for name in sorted(attacks.loc[attacks["threat"] == threat, "attack"].unique()):
            out.append(View(f"attack:{name}", f"{threat} attack: {name}"))
    return out


def _proxy_from_evals(evals: pd.DataFrame) -> pd.DataFrame:
    """clean and seen accuracy at each trial's last evaluated epoch of the trial stage."""
    ev = evals[(evals["stage"] == "trial") & evals["accuracy"].notna()] if len(evals) else evals
    if ev.empty:
        return pd.DataFrame(columns=KEY + ["clean_proxy", "robust_proxy"])
    last = ev.groupby(KEY)["epoch"].transform("max")
    ev = ev[ev["epoch"] == last]
    clean = _clean(ev).rename("clean_proxy")
    robust = ev[ev["threat"] == "seen"].groupby(KEY)["accuracy"].min().rename("robust_proxy")
    return pd.concat([clean, robust], axis=1).reset_index()


def _clean(rows: pd.DataFrame) -> pd.Series:
    """Clean accuracy per trial: the ``clean`` row (not e.g. a randomized predictor's
    single-draw ``clean_per_draw``), else the best clean-threat row."""
    named = rows[rows["attack"] == "clean"].groupby(KEY)["accuracy"].max()
    return named.combine_first(rows[rows["threat"] == "clean"].groupby(KEY)["accuracy"].max())


def _final_robust(fin: pd.DataFrame, key: str) -> pd.Series:
    attacks = _attack_rows(fin)
    if key in AGGREGATES:
        direct = fin[fin["attack"] == key].groupby(KEY)["accuracy"].min()
        # Without the stored aggregate the worst single attack is used: for a per-image worst
        # case over attacks that is an upper bound.
        threat = "seen" if key == WORST_SEEN else "unseen"
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
        live = out["status"] != store.FAILED
        out["clean"] = out["clean"].fillna(out.pop("clean_proxy").where(live))
        out["robust"] = out["robust"].fillna(out.pop("robust_proxy").where(live))
        return out
    fin = final_rows(evals)
    if fin.empty:
        return out.assign(clean=math.nan, robust=math.nan)
    clean = _clean(fin).rename("clean")
    robust = _final_robust(fin, view).rename("robust")
    both = pd.concat([clean, robust], axis=1).reset_index()
    out["clean_acc"] = trials["clean_acc"].to_numpy()
    out = out.merge(both, on=KEY, how="left")
    # A trial with final attack rows but no final clean row falls back to its search-time clean accuracy.
    out["clean"] = out["clean"].where(out["robust"].isna(), out["clean"].fillna(out["clean_acc"]))
    out = out.drop(columns="clean_acc")
    return out


def with_front(table: pd.DataFrame, group: str = "method") -> pd.DataFrame:
    """``table`` plus ``on_front``: the trial is non-dominated within its group in (clean, robust)."""
    out = table.copy()
    out["on_front"] = False
    for _, idx in out.groupby(group).groups.items():
        pts = out.loc[idx, ["clean", "robust"]].to_numpy(dtype=float)
        out.loc[idx, "on_front"] = pareto_mask(pts) if len(pts) else []
    return out


def hypervolumes(table: pd.DataFrame, group: str = "method", ref=(0.0, 0.0)) -> dict[str, float]:
    return {g: hypervolume_2d(sub[["clean", "robust"]].to_numpy(dtype=float), ref)
            for g, sub in table.groupby(group)}


def hypervolume_curve(table: pd.DataFrame, group: str = "method", ref=(0.0, 0.0)) -> pd.DataFrame:
    """Per group, the hypervolume after each finished trial in completion order
    (``finished_at``), with the cumulative device-hours spent (failed trials count: they used
    the devices too)."""
    rows = []
    done = table[table["finished_at"].notna()].sort_values("finished_at", kind="stable")
    for g, sub in done.groupby(group, sort=True):
        front = np.zeros((0, 2))
        hours = 0.0
        for n, rec in enumerate(sub.itertuples(index=False), start=1):
            dev = getattr(rec, "device_s")
            hours += 0.0 if pd.isna(dev) else float(dev) / 3600.0
            pt = np.array([[rec.clean, rec.robust]], dtype=float)
            if not np.isnan(pt).any():
                front = np.vstack([front, pt])
                front = front[pareto_mask(front)]
            rows.append({group: g, "n_trials": n, "device_hours": hours,
                         "hypervolume": hypervolume_2d(front, ref), "trial_id": rec.trial_id,
                         "experiment": rec.experiment, "finished_at": rec.finished_at})
    return pd.DataFrame(rows, columns=[group, "n_trials", "device_hours", "hypervolume", "trial_id",
                                       "experiment", "finished_at"])


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


# ---------------------------------------------------------------------------- selection and details


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


def hp_columns(frame: pd.DataFrame) -> list[str]:
    return store.hp_columns(frame.columns)


def hyperparameters(trials: pd.DataFrame, keys: Iterable[tuple[str, str]],
                    searched: Iterable[str] = ()) -> pd.DataFrame:
    """Rows: hyperparameters (without the ``hp_`` prefix), the ``searched`` knobs first, then
    the fixed config fields; columns: the selected trials. A knob only other methods have (NaN
    for all selected trials) is left out."""
    sub = _subset(trials, keys)
    searched = set(searched)
    cols = [c for c in hp_columns(sub) if sub[c].notna().any()]
    cols.sort(key=lambda c: c[len(store.HP_PREFIX):] not in searched)  # stable: searched first
    table = sub.set_index(sub.apply(lambda r: label(r["experiment"], r["trial_id"]), axis=1))[["method"] + cols]
    table.columns = ["method"] + [c[len(store.HP_PREFIX):] for c in cols]
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
    """Long table (trial, attack, threat, accuracy, stage) for the selected trials: their final
    rows where they have some, else the per-epoch rows of their last epoch."""
    sub = _subset(evals, keys)
    sub = sub[sub["accuracy"].notna()] if len(sub) else sub
    parts = []
    for key, grp in sub.groupby(KEY):
        fin = grp[grp["stage"] == "final"]
        if fin.empty:
            fin = grp[grp["stage"] == "trial"]
            fin = fin[fin["epoch"] == fin["epoch"].max()]
        parts.append(fin.assign(trial=label(*key)))
    cols = ["trial", "attack", "threat", "family", "accuracy", "stage", "epoch", "aggregate"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    order = {"clean": 0, "seen": 1, "unseen": 2}
    out["aggregate"] = is_aggregate(out)
    out["_o"] = out["threat"].map(order).fillna(3) + out["aggregate"] * 0.5
    return out.sort_values(["trial", "_o", "attack"])[cols].reset_index(drop=True)


def _flag_list(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v)]
    text = str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed if str(v)]
    return [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]


def masking_flags(trials: pd.DataFrame, evals: pd.DataFrame, keys: Iterable[tuple[str, str]],
                  tolerance: float = 0.02) -> pd.DataFrame:
    """Gradient-masking warnings per selected trial, and who checked (``checked_by``:
    "evaluator", "dashboard", or "" for a trial without final rows): the evaluator's own ``masking_flags``
    (trials.parquet, ';'-joined; '' means checked and clean). A trial without that column
    value gets two checks on its final rows instead: a gradient-free attack (family
    ``square``) scoring below every other seen attack, and an attack scoring above clean
    accuracy (``tolerance`` in accuracy, absorbing sampling noise)."""
    keys = list(keys)
    rows = []
    tsub = _subset(trials, keys)
    esub = _subset(evals, keys)
    for key in keys:
        stored = None
        if "masking_flags" in tsub:
            values = tsub.loc[(tsub["experiment"] == key[0]) & (tsub["trial_id"] == key[1]), "masking_flags"]
            values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            stored = _flag_list(values[0]) if values else None
        if stored is not None:
            rows.append({"trial": label(*key), "flags": stored, "checked_by": "evaluator"})
            continue
        flags: list[str] = []
        grp = esub[(esub["experiment"] == key[0]) & (esub["trial_id"] == key[1])] if len(esub) else esub
        fin = final_rows(grp) if len(grp) else grp
        if len(fin):
            attacks = _attack_rows(fin)
            seen = attacks[attacks["threat"] == "seen"]
            free = seen[seen["family"] == "square"]["accuracy"]
            grad = seen[seen["family"] != "square"]["accuracy"]
            if len(free) and len(grad) and free.min() < grad.min() - tolerance:
                flags.append(f"check: gradient-free attack ({free.min():.3f}) beats every gradient attack "
                             f"({grad.min():.3f}), a sign of gradient masking")
            clean = _clean(fin)
            if len(clean) and len(attacks) and attacks["accuracy"].max() > clean.max() + tolerance:
                worst = attacks.loc[attacks["accuracy"].idxmax()]
                flags.append(f"check: {worst['attack']} accuracy {worst['accuracy']:.3f} exceeds clean "
                             f"accuracy {clean.max():.3f}")
        rows.append({"trial": label(*key), "flags": flags, "checked_by": "dashboard" if len(fin) else ""})
    return pd.DataFrame(rows, columns=["trial", "flags", "checked_by"])


# ---------------------------------------------------------------------------- trial table


def trial_table(trials: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """trials.parquet columns joined with the current view's objectives and front membership."""
    if trials.empty:
        return trials.assign(clean=[], robust=[], on_front=[])
    extra = table[KEY + [c for c in ("clean", "robust", "on_front") if c in table]]
    out = trials.merge(extra, on=KEY, how="left")
    first = KEY + ["method", "status", "clean", "robust", "on_front", "clean_acc", "robust_acc"]
    first = [c for c in first if c in out]
    hp = hp_columns(out)
    rest = [c for c in out.columns if c not in first and c not in hp and c != "schema_version"]
    return out[first + hp + rest]


def filter_trials(table: pd.DataFrame, methods: Iterable[str] | None = None, statuses: Iterable[str] | None = None,
                  front_only: bool = False, min_robust: float = 0.0, sort_by: str | None = None,
                  descending: bool = True) -> pd.DataFrame:
    out = table
    if methods:
        out = out[out["method"].isin(list(methods))]
    if statuses:
        out = out[out["status"].isin(list(statuses))]
    if front_only and "on_front" in out:
        out = out[out["on_front"].fillna(False).astype(bool)]
    if min_robust > 0:
        out = out[out["robust"].fillna(-1.0) >= min_robust]
    if sort_by and sort_by in out:
        out = out.sort_values(sort_by, ascending=not descending, na_position="last", kind="stable")
    return out.reset_index(drop=True)


def to_csv(table: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------- search space


def search_space(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Field -> distribution from an experiment.json (``search_space``, also looked for under
    ``config``); entries that are not distributions are dropped."""
    for holder in (meta, meta.get("config") if isinstance(meta.get("config"), dict) else {}):
        space = holder.get("search_space") or holder.get("space")
        if isinstance(space, dict):
            return {k: v for k, v in space.items() if isinstance(v, dict) and not str(k).startswith("_")}
    return {}


def searched_columns(trials: pd.DataFrame, space: dict[str, dict[str, Any]]) -> list[str]:
    """The hp_* columns of the searched knobs: those named by the search space, else (no space
    recorded) those that vary across ``trials``. Fixed config fields are stored as hp_* too."""
    cols = [c for c in hp_columns(trials) if trials[c].notna().any()]
    if space:
        return [c for c in cols if c[len(store.HP_PREFIX):] in space]
    return [c for c in cols if trials[c].nunique(dropna=True) > 1]


def experiment_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """A few provenance fields of an experiment.json, for display."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else meta
    out = {}
    for k in ("method", "dataset", "num_samples", "max_epochs", "eps_eval", "sampler", "scheduler"):
        if k in cfg:
            out[k] = cfg[k]
    for k in ("git_revision", "git", "hardware", "versions", "objectives"):
        if k in meta:
            out[k] = meta[k]
    return out
