"""Search spaces as data: ``search_spaces/<method>.json`` maps config fields to distributions.

Each entry is one of::

    {"type": "float", "low": a, "high": b, "log": false}
    {"type": "int", "low": a, "high": b, "log": false}
    {"type": "categorical", "choices": [...]}

and may carry ``"scale": "eps"``: the numbers are written at the CIFAR scale (ε = 8/255) and
multiplied by the data set's ``eps_scale``, like the config's budget fields. Keys starting with
``_`` are comments.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna.distributions as od

HERE = Path(__file__).parent


class SpaceError(ValueError):
    pass


def load(method: str) -> dict[str, dict[str, Any]]:
    path = HERE / f"{method}.json"
    if not path.exists():
        raise SpaceError(f"no search space for method {method!r} (expected {path})")
    raw = json.loads(path.read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def to_optuna(space: dict[str, dict[str, Any]], eps_scale: float = 1.0) -> dict[str, od.BaseDistribution]:
    out = {}
    for key, d in space.items():
        mult = eps_scale if d.get("scale") == "eps" else 1.0
        kind = d.get("type")
        if kind == "float":
            out[key] = od.FloatDistribution(d["low"] * mult, d["high"] * mult, log=d.get("log", False))
        elif kind == "int":
            out[key] = od.IntDistribution(d["low"], d["high"], log=d.get("log", False))
        elif kind == "categorical":
            out[key] = od.CategoricalDistribution([c * mult if mult != 1.0 else c for c in d["choices"]])
        else:
            raise SpaceError(f"{key}: unknown distribution type {kind!r}")
    return out


def contains(dist: od.BaseDistribution, value: Any) -> bool:
    return dist._contains(dist.to_internal_repr(value))
