"""The final evaluation's gradient-masking verdicts as the dashboard reads them from
``trials.parquet``: ``masking_checks``, per check its counts (JSON: check name -> {"count",
"n", "limit", "fired", "what"}: e.g. the images Square fooled that no white-box gradient attack
fooled, out of n, against the count above which noise no longer explains it and the check
fires), and ``masking_flags``, the ';'-joined names of what fired. Results written before a column existed
hold '' there, and a malformed value reads as none: a missing verdict never breaks the page, it
only leaves a trial unmarked. Pure Python and pandas."""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd


def flag_list(value: Any) -> list[str]:
    """The flags of a ``masking_flags`` value: ';'- or ','-joined text, a JSON list, or a list."""
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


def _number(value: Any, kind: type) -> Any:
    try:
        out = kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if isinstance(out, float) and math.isnan(out) else out


def checks(value: Any) -> dict[str, dict[str, Any]]:
    """A ``masking_checks`` value as check name -> {count, n, limit, fired, what}; {} for a
    missing, empty or malformed value, and entries that are not objects are dropped."""
    if not isinstance(value, str) or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    out = {}
    for name, entry in parsed.items():
        if not isinstance(entry, dict):
            continue
        out[str(name)] = {"count": _number(entry.get("count"), int), "n": _number(entry.get("n"), int),
                          "limit": _number(entry.get("limit"), float), "fired": bool(entry.get("fired", False)),
                          "what": str(entry.get("what") or "")}
    return out


def fired(row: dict[str, Any]) -> list[str]:
    """What fired for one trial: the checks of its ``masking_checks`` that fired, else (results
    without counts) its ``masking_flags``."""
    named = [name for name, c in checks(row.get("masking_checks")).items() if c["fired"]]
    return named or flag_list(row.get("masking_flags"))


def fired_text(trials: pd.DataFrame) -> pd.Series:
    """Per trial (``trials``' index), the '; '-joined names of what fired ('' where nothing did)."""
    both = trials.reindex(columns=["masking_checks", "masking_flags"])
    return pd.Series(["; ".join(fired({"masking_checks": c, "masking_flags": f}))
                      for c, f in both.itertuples(index=False)], index=trials.index, dtype=object)
