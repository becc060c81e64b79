"""The results store: the contract between a search and everything that reads it.

``<storage>/<experiment>/`` holds Ray's own state plus three files:

* ``trials.parquet`` — one row per trial: ids, method, dataset, status (and the reason when it
  failed), every hyperparameter as its own typed ``hp_<field>`` column, final clean and
  seen-attack accuracy, epochs, wall-clock and device-seconds.
* ``evals.parquet`` — long format, one row per (trial, stage, epoch, attack): ``stage`` is
  ``"trial"`` (the cheap per-epoch proxy) or ``"final"`` (the full suite after the search).
* ``experiment.json`` — the experiment config, search space, objectives, library versions, git
  revision and hardware.

Every write goes to a temporary file in the same folder and is renamed over the old one, so a
reader sees the old file or the new one, never half of one. Numbers are stored as numbers.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TRIALS = "trials.parquet"
EVALS = "evals.parquet"
EXPERIMENT = "experiment.json"
HP_PREFIX = "hp_"

# status values in trials.parquet
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"

TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": pa.int32(),
    "experiment": pa.string(),
    "trial_id": pa.string(),
    "method": pa.string(),
    "dataset": pa.string(),
    "arch": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "clean_acc": pa.float64(),
    "robust_acc": pa.float64(),
    "eps_eval": pa.float64(),
    "epochs": pa.int64(),
    "wall_s": pa.float64(),
    "device_s": pa.float64(),  # wall seconds × devices (GPUs, else CPU workers) held
    "num_workers": pa.int64(),
    "nodes": pa.string(),  # comma-separated node IPs the trial's workers ran on
    "started_at": pa.float64(),  # unix seconds
    "finished_at": pa.float64(),
    "startup_s": pa.float64(),  # seconds from the trial's start to its first training step
    "stopped_early": pa.bool_(),  # stopped by the early-stopping scheduler (its last epoch counts)
}

EVAL_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": pa.int32(),
    "experiment": pa.string(),
    "trial_id": pa.string(),
    "method": pa.string(),
    "dataset": pa.string(),
    "stage": pa.string(),  # "trial" | "final"
    "epoch": pa.int64(),  # -1 for the final stage
    "attack": pa.string(),  # e.g. "clean", "pgd20_linf", "apgd_ce", "union_unseen"
    "family": pa.string(),  # e.g. "clean", "pgd", "apgd", "square", "corruption", "worst_seen"
    "threat": pa.string(),  # "clean" | "seen" | "unseen" | "check" (sanity sweeps, in no robust number)
    "norm": pa.string(),  # "linf" | "l2" | "none" | ...
    "eps": pa.float64(),  # NaN where a budget does not apply
    "accuracy": pa.float64(),
    "n": pa.int64(),
    "eot_samples": pa.int64(),
    "seconds": pa.float64(),
}


def _table(rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> pa.Table:
    """Typed table: known columns get their declared type; extra columns (hyperparameters)
    are inferred per column, so a float knob stays float even where some rows lack it."""
    names = list(columns) + sorted({k for r in rows for k in r} - set(columns))
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        if name in columns:
            typ = columns[name]
            if pa.types.is_floating(typ):
                values = [math.nan if v is None else float(v) for v in values]
            arr = pa.array(values, type=typ)
        else:
            arr = _infer(values)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={"schema_version": str(SCHEMA_VERSION)}))


def _infer(values: list[Any]) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([math.nan if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result over ``path`` (same folder, so the rename
    is atomic on POSIX filesystems); a failure leaves ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(path: Path, rows: list[dict[str, Any]], columns: dict[str, pa.DataType]) -> None:
    table = _table(rows, columns)
    atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))


def write_trials(exp_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = [{"schema_version": SCHEMA_VERSION, **r} for r in rows]
    write_parquet(Path(exp_dir) / TRIALS, rows, TRIAL_COLUMNS)


def write_evals(exp_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = [{"schema_version": SCHEMA_VERSION, **r} for r in rows]
    write_parquet(Path(exp_dir) / EVALS, rows, EVAL_COLUMNS)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet file as dicts ([] if absent); NaN floats come back as NaN."""
    path = Path(path)
    if not path.exists():
        return []
    return read_table(path).to_pylist()


def read_frame(path: Path) -> pd.DataFrame:
    return read_table(path).to_pandas()


def read_table(path: Path) -> pa.Table:
    """Read through one open file: by path, pyarrow may open it twice and pair one version's
    footer with the next version's data while a writer renames a new version in."""
    with open(path, "rb") as fh:
        return pq.read_table(fh)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def hp_columns(columns: Iterable[str]) -> list[str]:
    return [c for c in columns if c.startswith(HP_PREFIX)]
