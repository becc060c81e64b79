"""Finding and reading the result files below a results root, safely: no Streamlit, no plotting.

A results root holds one folder per experiment (``<root>/<name>/`` with ``trials.parquet``,
``evals.parquet`` and ``experiment.json``, see :mod:`raysearch.store`); several experiments are
read together so the fronts of different methods can be overlaid. The root may also be one
experiment folder itself.

Everything read lies below the resolved root: a folder or file whose resolved path (symlinks
followed) leaves the root is refused. Parquet is read with pyarrow and JSON with :mod:`json`;
nothing is unpickled. A missing, partial or corrupt file never raises: it becomes a
:class:`Problem` the page shows, and the rest of the root is still read. Rows come back with
every column of :mod:`raysearch.schema` (``raysearch.store.conform``), whatever the file held.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from raysearch import store
from raysearch.schema import SCHEMA_VERSION

logger = logging.getLogger(__name__)

FILES = (store.TRIALS, store.EVALS, store.EXPERIMENT)
KEY = ["experiment", "trial_id"]  # a trial's identity across experiments
UNKNOWN_METHOD = "unknown"  # shown for a row that names no method
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
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)  # experiment -> its experiment.json
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


def _read_parquet(root: Path, folder: Path, fname: str, name: str) -> tuple[pd.DataFrame | None, Problem | None]:
    path = inside(root, folder / fname)
    if path is None:
        return None, Problem(name, f"{fname}: skipped, it links outside the results root", "error")
    if not path.exists():
        return None, None
    try:
        frame = store.read_frame(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None, Problem(name, f"{fname} is unreadable (corrupt or partly written): {_first_line(exc)}", "error")
    return frame, None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__


def _conform(frame: pd.DataFrame, name: str, kind: str) -> pd.DataFrame:
    frame = store.conform(frame, kind)
    frame["method"] = frame["method"].replace("", UNKNOWN_METHOD)
    # The folder name identifies the experiment: it is unique below the root, the stored
    # name need not be (a copied or renamed folder).
    frame["experiment"] = name
    return frame


def load_experiment(root: Path, name: str, folder: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None, dict[str, Any], list[Problem]]:
    problems: list[Problem] = []
    trials, p = _read_parquet(root, folder, store.TRIALS, name)
    if p:
        problems.append(p)
    elif trials is None:
        problems.append(Problem(name, "no trials.parquet yet: the search has not finished a trial", "warning"))
    if trials is not None:
        missing = [c for c in ("trial_id",) if c not in trials]
        if missing:
            problems.append(Problem(name, f"trials.parquet lacks column(s) {', '.join(missing)}", "error"))
            trials = None
        else:
            version = trials["schema_version"].max() if "schema_version" in trials and len(trials) else SCHEMA_VERSION
            if pd.notna(version) and int(version) > SCHEMA_VERSION:
                problems.append(Problem(name, f"trials.parquet has schema version {int(version)}, newer than this "
                                              f"dashboard's {SCHEMA_VERSION}; some columns may be ignored"))
            trials = _conform(trials, name, "trials")
            if trials.empty:
                problems.append(Problem(name, "trials.parquet holds no trials yet", "warning"))

    evals, p = _read_parquet(root, folder, store.EVALS, name)
    if p:
        problems.append(Problem(name, p.message + "; per-attack results are not shown", "warning"))
    elif evals is None and trials is not None and len(trials):
        problems.append(Problem(name, "no evals.parquet: per-attack results are not shown", "warning"))
    if evals is not None:
        missing = [c for c in ("trial_id", "attack", "accuracy") if c not in evals]
        if missing:
            problems.append(Problem(name, f"evals.parquet lacks column(s) {', '.join(missing)}; per-attack results are not shown"))
            evals = None
        else:
            evals = _conform(evals, name, "evals")

    recorded, p = read_recorded(root, folder, name)
    if p:
        problems.append(p)
    return trials, evals, recorded, problems


def read_recorded(root: Path, folder: Path, name: str) -> tuple[dict[str, Any], Problem | None]:
    """The experiment's ``experiment.json`` as a dict ({} and a Problem where it cannot be)."""
    path = inside(root, folder / store.EXPERIMENT)
    if path is None:
        return {}, Problem(name, "experiment.json: skipped, it links outside the results root")
    if not path.exists():
        return {}, Problem(name, "no experiment.json: the search space and config are not shown")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return {}, Problem(name, "experiment.json is too large to be an experiment record; ignored")
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {}, Problem(name, f"experiment.json is unreadable: {_first_line(exc)}")
    if not isinstance(obj, dict):
        return {}, Problem(name, "experiment.json is not a JSON object; ignored")
    return obj, None


def load_results(root: str | os.PathLike) -> Results:
    """Every experiment below ``root``, trials and evals concatenated (hyperparameter columns
    of other methods are NaN). Raises :class:`RootError` only for the root itself."""
    root = resolve_root(root)
    dirs, problems = experiment_dirs(root)
    res = Results(root=root, problems=list(problems))
    trial_frames, eval_frames = [], []
    for name, folder in dirs.items():
        trials, evals, recorded, probs = load_experiment(root, name, folder)
        res.problems.extend(probs)
        res.recorded[name] = recorded
        if trials is not None:
            res.experiments.append(name)
            trial_frames.append(trials)
            if evals is not None:
                eval_frames.append(evals[evals["trial_id"].isin(set(trials["trial_id"]))] if len(trials) else evals.iloc[:0])
    res.trials = _concat(trial_frames, "trials")
    res.evals = _concat(eval_frames, "evals")
    return res


def _concat(frames: list[pd.DataFrame], kind: str) -> pd.DataFrame:
    """The non-empty frames one below the other; with none, an empty frame of every column."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return store.conform(pd.DataFrame(), kind)
    return pd.concat(frames, ignore_index=True, sort=False)
