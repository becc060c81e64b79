"""The lineage of a population-based-training trial, from ``trials.parquet``: ``lineage_json``,
the clone events behind the trial's weights, oldest first (JSON list of {"epoch", "parent",
"changed": {hp: [old, new]}}: at that epoch the trial took over the parent's checkpoint and
hyperparameters and perturbed ``changed``; the events its parent inherited come first, so the
list is the whole chain), with ``parent_trial_id`` and ``cloned_at_epoch`` naming the last one
('' and 0 for a trial that never cloned). Results of other schedulers, or written before these
columns existed, have no events. Pure Python and pandas."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pandas as pd

from dashboard.details import label
from dashboard.load import KEY

EVENT_COLUMNS = ["trial", "epoch", "parent", "changed"]


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _changed(changed: Any) -> str:
    """{hp: [old, new]} as "hp: old → new, ..."; other shapes as given."""
    if not isinstance(changed, dict):
        return "" if changed is None else str(changed)
    parts = []
    for hp, values in changed.items():
        if isinstance(values, (list, tuple)) and len(values) == 2:
            parts.append(f"{hp}: {_value(values[0])} → {_value(values[1])}")
        else:
            parts.append(f"{hp}: {_value(values)}")
    return ", ".join(parts)


def _int(value: Any) -> int | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else int(out)


def events(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One trial's clone events, oldest first: {"epoch", "parent", "changed"} with ``changed``
    as text. From ``lineage_json``; where it is missing or malformed but ``parent_trial_id``
    names a parent, the one event it records (changes unknown)."""
    parsed: Any = None
    text = row.get("lineage_json")
    if isinstance(text, str) and text.strip():
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    out = []
    if isinstance(parsed, list):
        for e in parsed:
            if isinstance(e, dict) and e.get("parent"):
                out.append({"epoch": _int(e.get("epoch")), "parent": str(e["parent"]),
                            "changed": _changed(e.get("changed"))})
    parent = row.get("parent_trial_id")
    if not out and isinstance(parent, str) and parent:
        out.append({"epoch": _int(row.get("cloned_at_epoch")), "parent": parent, "changed": ""})
    return out


def _rows(trials: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    cols = KEY + ["lineage_json", "parent_trial_id", "cloned_at_epoch"]
    return {(r["experiment"], r["trial_id"]): r for r in trials.reindex(columns=cols).to_dict("records")}


def lineage(trials: pd.DataFrame, keys: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """The clone events behind the selected trials' weights, oldest first, one row each
    (trial, epoch, parent, changed)."""
    rows = _rows(trials)
    out = [{"trial": label(*key), **e} for key in dict.fromkeys(keys) if key in rows for e in events(rows[key])]
    return pd.DataFrame(out, columns=EVENT_COLUMNS).astype({"epoch": "Int64"})


def chain(events: pd.DataFrame, trial: str) -> str:
    """One trial's lineage as a line, newest first: "P (epoch 6) ← Q (epoch 3)" ('' for none)."""
    mine = events[events["trial"] == trial]
    return " ← ".join(f"{parent} (epoch {'?' if pd.isna(epoch) else int(epoch)})"
                      for parent, epoch in zip(mine["parent"][::-1], mine["epoch"][::-1]))
