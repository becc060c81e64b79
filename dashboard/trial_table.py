"""The trial table: ``trials.parquet`` joined with the current view's objectives, filtered,
sorted and written as CSV."""
from __future__ import annotations

import io
from typing import Iterable

import pandas as pd

from dashboard.load import KEY
from raysearch.schema import hp_columns


def trial_table(trials: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """trials.parquet columns joined with the current view's objectives and front membership."""
    if trials.empty:
        return trials.assign(clean=[], robust=[], on_front=[])
    extra = table[KEY + [c for c in ("clean", "robust", "on_front") if c in table]]
    out = trials.merge(extra, on=KEY, how="left")
    first = KEY + ["method", "status", "clean", "robust", "on_front", "clean_acc", "robust_acc"]
    first = [c for c in first if c in out]
    hp = hp_columns(out.columns)
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
