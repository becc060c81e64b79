"""What an experiment recorded in its ``experiment.json`` (a dict, ``recorded``): the search
space, which ``hp_<field>`` columns were searched, and a few provenance fields to show."""
from __future__ import annotations

from typing import Any

import pandas as pd

from raysearch.schema import HP_PREFIX, hp_columns

UNKNOWN = "unknown"  # a scheduler experiment.json does not name


def search_space(recorded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Field -> distribution from an experiment.json (``search_space``, also looked for under
    ``config``); entries that are not distributions are dropped."""
    for holder in (recorded, recorded.get("config") if isinstance(recorded.get("config"), dict) else {}):
        space = holder.get("search_space") or holder.get("space")
        if isinstance(space, dict):
            return {k: v for k, v in space.items() if isinstance(v, dict) and not str(k).startswith("_")}
    return {}


def searched_columns(trials: pd.DataFrame, space: dict[str, dict[str, Any]]) -> list[str]:
    """The hp_* columns of the searched knobs: those named by the search space, else (no space
    recorded) those that vary across ``trials``. Fixed config fields are stored as hp_* too."""
    cols = [c for c in hp_columns(trials.columns) if trials[c].notna().any()]
    if space:
        return [c for c in cols if c.removeprefix(HP_PREFIX) in space]
    return [c for c in cols if trials[c].nunique(dropna=True) > 1]


def experiment_summary(recorded: dict[str, Any]) -> dict[str, Any]:
    """A few provenance fields of an experiment.json, for display."""
    config = recorded.get("config") if isinstance(recorded.get("config"), dict) else recorded
    out = {}
    for k in ("method", "dataset", "num_samples", "max_epochs", "eps_eval", "sampler", "scheduler"):
        if k in config:
            out[k] = config[k]
    for k in ("git_revision", "git", "hardware", "versions", "objectives"):
        if k in recorded:
            out[k] = recorded[k]
    return out


def scheduler(recorded: dict[str, Any]) -> str:
    """The trial scheduler an experiment ran with (``config.scheduler``: none, moasha, mopbt);
    "unknown" where its experiment.json does not say."""
    config = recorded.get("config") if isinstance(recorded.get("config"), dict) else recorded
    value = config.get("scheduler")
    return str(value) if isinstance(value, str) and value else UNKNOWN
