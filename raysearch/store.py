"""The results store: reading and writing an experiment's files, atomically.

``<storage>/<experiment>/`` holds Ray's own state plus three files:

* ``trials.parquet`` — one row per trial (columns: ``raysearch.schema.TRIAL_COLUMNS``);
* ``evals.parquet`` — one row per (trial, stage, epoch, attack) (``raysearch.schema.EVAL_COLUMNS``);
* ``experiment.json`` — the experiment config, search space, objectives, library versions, git
  revision (and whether the tree was dirty) and hardware.

Every write goes to a temporary file in the same folder and is renamed over the old one, so a
reader sees the old file or the new one, never half of one. Rows are checked against the schema
before anything is written; numbers are stored as numbers, each declared column with its
declared type. The schema's derived columns, each accuracy's 95% Wilson interval
(``raysearch.schema.intervals``), are computed here from the accuracy and its n on every write,
whatever the row held, so no writer computes them and none can forget them or leave them stale.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from raysearch.schema import SCHEMA_VERSION, Column, check_row, columns_of, intervals
from raysearch.stats import accuracy_interval

TRIALS = "trials.parquet"
EVALS = "evals.parquet"
EXPERIMENT = "experiment.json"

_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}


def arrow_type(name: str, column: Column) -> pa.DataType:
    return pa.int32() if name == "schema_version" else _ARROW[column.kind]


def _table(rows: list[dict[str, Any]], kind: str) -> pa.Table:
    """Typed table: declared columns get their declared type; ``hp_<field>`` columns are
    inferred per column, so a float knob stays float even where some rows lack it."""
    columns = columns_of(kind)
    for row in rows:
        check_row(row, kind)
    names = list(columns) + sorted({k for r in rows for k in r} - set(columns))
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        if name in columns:
            typ = arrow_type(name, columns[name])
            if pa.types.is_floating(typ):
                values = [math.nan if v is None else float(v) for v in values]
            elif pa.types.is_string(typ):
                values = [None if v is None else str(v) for v in values]
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


def with_intervals(row: dict[str, Any], kind: str) -> dict[str, Any]:
    """A copy of ``row`` with every accuracy's interval columns computed from the accuracy and
    its n (NaN where either is missing); the values the row held there are ignored."""
    out = dict(row)
    for interval in intervals(kind):
        out[interval.low], out[interval.high] = accuracy_interval(row.get(interval.accuracy), row.get(interval.n))
    return out


def _write(path: Path, rows: Iterable[dict[str, Any]], kind: str) -> None:
    rows = [with_intervals({**r, "schema_version": SCHEMA_VERSION}, kind) for r in rows]
    table = _table(rows, kind)
    atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))


def write_trials(exp_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    _write(Path(exp_dir) / TRIALS, rows, "trials")


def write_evals(exp_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    _write(Path(exp_dir) / EVALS, rows, "evals")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Parquet file as dicts ([] if absent); NaN floats come back as NaN."""
    path = Path(path)
    if not path.exists():
        return []
    return read_table(path).to_pylist()


def read_table(path: Path) -> pa.Table:
    """Read through one open file: by path, pyarrow may open it twice and pair one version's
    footer with the next version's data while a writer renames a new version in."""
    with open(path, "rb") as fh:
        return pq.read_table(fh)


def read_frame(path: Path):
    return read_table(path).to_pandas()


def conform(frame, kind: str):
    """A copy of a pandas frame read from a results file with every declared column of ``kind``
    present (absent ones filled with their missing value, e.g. from a file written before the
    column existed: an older file's n and interval columns are NaN) and numbers as floats, so
    readers never patch columns themselves."""
    import pandas as pd

    frame = frame.copy()
    for name, column in columns_of(kind).items():
        if name not in frame:
            frame[name] = column.missing
        if column.kind in ("int", "float"):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
        elif column.kind == "str":
            frame[name] = frame[name].astype(object).where(frame[name].notna(), "").astype(str)
    return frame


def write_json(path: Path, obj: dict[str, Any]) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
