"""The results schema: every column of ``trials.parquet`` and ``evals.parquet`` with its type
and unit, the vocabularies of their categorical columns, and one constructor per row kind.

Whatever writes a row builds it here (``trial_row``, ``eval_row``) and the store refuses a
row with a column not declared below (``check_row``); whatever reads the files gets every
declared column, absent ones filled with their missing value (``raysearch.store.conform``).
Accuracies are fractions in [0, 1], times are seconds, budgets are on the [0, 1] pixel scale.

Every accuracy column names the column holding its n, the images it was measured on
(``Column.n``); from that pairing each accuracy gets two derived columns, ``<name>_low`` and
``<name>_high``, the ends of its 95% Wilson score interval (``intervals``). Derived columns are
filled by the store when it writes (``raysearch.store``), never by a writer.
Pure Python: no pyarrow or pandas here, so the attack registry and the workers can use the
vocabularies for nothing.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

# 2: n and 95% Wilson interval columns beside every accuracy; 3: evals' queries, restarts, iterations and
# protocol, trials' masking_checks (an older file reads with them missing, raysearch.store.conform)
SCHEMA_VERSION = 3
HP_PREFIX = "hp_"  # trials.parquet: one typed column per config field, "hp_<field>"


class Status(StrEnum):
    """Where a trial stands (``trials.parquet`` ``status``)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class Stage(StrEnum):
    """Which evaluation produced an ``evals.parquet`` row."""

    TRIAL = "trial"  # the cheap per-epoch proxy that steers the search (validation split)
    FINAL = "final"  # the full attack suite after the search (test split)


class Threat(StrEnum):
    """An attack's relation to the trial's threat model (L∞ at ε_eval)."""

    CLEAN = "clean"  # no attack
    SEEN = "seen"  # L∞ at ε_eval: the threat model the defense trained for
    UNSEEN = "unseen"  # another geometry (L2, flow, colour, DCT) or a natural corruption
    CHECK = "check"  # sanity sweeps for the gradient-masking checks; in no robust number


class Protocol(StrEnum):
    """The attack settings an ``evals.parquet`` row was measured with."""

    STANDARD = "standard"  # a deterministic predictor: the registry's settings, scored on one call
    # a randomized predictor: AutoAttack's rand version (EOT gradients, one restart, Square on the
    # same draws), every image scored per call over scoring_calls fresh calls
    RAND = "rand"


FRACTION, SECONDS, UNIX_SECONDS, EPOCHS, PIXEL_SCALE = (
    "fraction in [0, 1]", "seconds", "unix seconds", "epochs", "[0, 1] pixel scale")
KINDS = ("int", "float", "str", "bool")


@dataclass(frozen=True)
class Column:
    kind: str  # one of KINDS
    doc: str
    unit: str = ""
    n: str = ""  # an accuracy (unit FRACTION): the column holding how many images it was measured on
    derived: bool = False  # filled by the store at write time from other columns; no writer sets it

    @property
    def missing(self) -> Any:
        """The value of a row that has none: NaN for floats, None otherwise."""
        return math.nan if self.kind == "float" else None


def _c(kind: str, doc: str, unit: str = "", n: str = "") -> Column:
    return Column(kind, doc, unit, n)


@dataclass(frozen=True)
class Interval:
    """The derived 95% Wilson interval columns of one accuracy column."""

    accuracy: str  # the accuracy column (a fraction)
    n: str  # the column holding its n
    low: str
    high: str


INTERVAL_LOW, INTERVAL_HIGH = "_low", "_high"  # suffixes of an accuracy's interval columns


def interval_names(accuracy: str) -> tuple[str, str]:
    """The names of ``accuracy``'s interval columns: (``<accuracy>_low``, ``<accuracy>_high``)."""
    return f"{accuracy}{INTERVAL_LOW}", f"{accuracy}{INTERVAL_HIGH}"


def _with_intervals(columns: dict[str, Column]) -> dict[str, Column]:
    """``columns`` followed by the two derived interval columns of every accuracy column."""
    out = dict(columns)
    for name, column in columns.items():
        if not column.n:
            continue
        n_column = columns.get(column.n)
        if column.unit != FRACTION or n_column is None or n_column.kind != "int":
            raise SchemaError(f"{name}: only an accuracy has an n, and its n must be a declared int column")
        low, high = interval_names(name)
        for end, column_name in (("lower", low), ("upper", high)):
            out[column_name] = Column("float", f"{end} end of {name}'s 95% Wilson score interval on {column.n} "
                                               f"images (derived by the store; NaN where either is missing)",
                                      FRACTION, derived=True)
    return out


class SchemaError(ValueError):
    """A row that does not fit the schema: a bug in whatever built it."""


TRIAL_COLUMNS: dict[str, Column] = _with_intervals({
    "schema_version": _c("int", "version of this schema the row was written with"),
    "experiment": _c("str", "experiment name (its folder under the storage path)"),
    "trial_id": _c("str", "Ray Tune's trial id"),
    "method": _c("str", "defense (a key of the defense registry)"),
    "dataset": _c("str", "data set name"),
    "arch": _c("str", "classifier architecture as given (auto: chosen per data set)"),
    "status": _c("str", "one of Status"),
    "error": _c("str", "why the trial failed, one line (failed trials only)"),
    "clean_acc": _c("float", "per-epoch proxy: clean accuracy at the last epoch (validation split)", FRACTION,
                    n="eval_n"),
    "robust_acc": _c("float", "per-epoch proxy: seen-attack accuracy at the last epoch", FRACTION, n="eval_n"),
    "eval_n": _c("int", "per-epoch proxy: validation images clean_acc and robust_acc were measured on"),
    "eps_eval": _c("float", "L∞ radius of the seen attack", PIXEL_SCALE),
    "epochs": _c("int", "epochs trained", EPOCHS),
    "wall_s": _c("float", "wall-clock time of the trial", SECONDS),
    "device_s": _c("float", "wall seconds × devices held (GPUs, else CPU workers)", SECONDS),
    "num_workers": _c("int", "DDP workers of the trial"),
    "nodes": _c("str", "comma-separated IPs of the nodes the trial's workers ran on"),
    "node_ids": _c("str", "comma-separated Ray node ids (tell apart nodes that share an IP)"),
    "started_at": _c("float", "when the trial started", UNIX_SECONDS),
    "finished_at": _c("float", "when the trial ended", UNIX_SECONDS),
    "startup_s": _c("float", "from the trial's start to its first training step", SECONDS),
    "stopped_early": _c("bool", "stopped by the early-stopping scheduler (its last epoch counts)"),
    "resumed_from": _c("int", "latest epoch a restarted worker group resumed from (0: never)", EPOCHS),
    "scheduler": _c("str", "the search's --scheduler: none, moasha or mopbt"),
    "parent_trial_id": _c("str", "mopbt: the trial whose checkpoint this trial last cloned ('' if none)"),
    "cloned_at_epoch": _c("int", "mopbt: epoch of the parent's checkpoint it last cloned (0 if none)", EPOCHS),
    "lineage_json": _c("str", "mopbt: JSON list, oldest first, of the clone events behind this trial's weights "
                              "(the parent's inherited, then its own): {epoch, parent, changed: {hp: [old, new]}}, "
                              "old being the value the weights were trained with before; '[]' if none"),
    "checkpoint": _c("str", "folder of the trial's last checkpoint, relative to the experiment folder (absolute in "
                            "results written before that rule; readers resolve both)"),
    "config_json": _c("str", "the trial's full config as JSON"),
    "final_clean_acc": _c("float", "final suite: clean accuracy (test split)", FRACTION, n="final_n"),
    "final_worst_seen": _c("float", "final suite: per-image worst case over seen attacks", FRACTION, n="final_n"),
    "final_union_unseen": _c("float", "final suite: robust to every unseen adversarial attack of the suite, per "
                                      "image (corruptions and a defense's own attacks are reported apart)", FRACTION,
                             n="final_n"),
    "final_n": _c("int", "final suite: test images the final_* accuracies were measured on"),
    "masking_flags": _c("str", "final suite: ';'-joined gradient-masking flags ('' if none)"),
    "masking_checks": _c("str", "final suite: every masking check that ran, as JSON {name: {count, n, limit, "
                                "fired, what}}: fired when count > limit (raysearch.evaluate.checks)"),
})

EVAL_COLUMNS: dict[str, Column] = _with_intervals({
    "schema_version": _c("int", "version of this schema the row was written with"),
    "experiment": _c("str", "experiment name"),
    "trial_id": _c("str", "Ray Tune's trial id"),
    "method": _c("str", "defense"),
    "dataset": _c("str", "data set name"),
    "stage": _c("str", "one of Stage"),
    "epoch": _c("int", "epoch the proxy ran after; -1 for the final stage", EPOCHS),
    "attack": _c("str", "attack or aggregate name, e.g. clean, proxy_robust (the per-epoch proxy), apgd_ce, "
                        "worst_seen; at ε_eval a plain name, at the robustness curve's other L∞ radii '<name>@<radius>' (curve_attack)"),
    "family": _c("str", "attacks of one family are variants of one method, e.g. pgd, apgd, corruption"),
    "threat": _c("str", "one of Threat; the seen attacks keep 'seen' on the robustness curve's '<name>@<radius>' rows"),
    "norm": _c("str", "linf, l2, flow, colour, dct, none; mixed for aggregates"),
    "eps": _c("float", "the attack's budget in its norm's units; NaN where none applies (aggregates at ε_eval); "
                       "on '<name>@<radius>' rows the radius, aggregates included"),
    "accuracy": _c("float", "accuracy on the n images", FRACTION, n="n"),
    "n": _c("int", "images evaluated"),
    "eot_samples": _c("int", "random draws averaged per gradient (1: deterministic predictor)"),
    "scoring_calls": _c("int", "fresh predictor calls each image is scored on; the accuracy is the mean fraction "
                               "of correct calls (1: deterministic predictor)"),
    "queries": _c("int", "predictor queries per image of a gradient-free search (Square); 0 where none applies, "
                         "-1 where the suite does not know (a defense's own attack)"),
    "restarts": _c("int", "runs per image from fresh starts (× targets of a targeted attack); 0 where no attack "
                          "ran (clean, aggregates), -1 where the suite does not know (a defense's own attack)"),
    "iterations": _c("int", "gradient or optimization steps per run; 0 where none applies (clean, aggregates, "
                            "corruptions, Square), -1 where the suite does not know (a defense's own attack)"),
    "protocol": _c("str", "one of Protocol: standard, or rand (AutoAttack's settings for randomized predictors, "
                          "scored per call)"),
    "seconds": _c("float", "time the attack took", SECONDS),
})

FINAL_EPOCH = -1  # evals.parquet epoch of final-stage rows
CURVE_MARK = "@"  # in an evals.parquet attack name: a robustness-curve row at another radius than ε_eval


def curve_attack(attack: str, radius: float) -> str:
    """The evals.parquet ``attack`` of a robustness-curve row: a seen attack or aggregate run at
    the L∞ ``radius`` (not ε_eval), e.g. ``worst_seen@0.1``. The distinct name keeps every
    reader of a plain name (``worst_seen``) on the ε_eval result and (trial, stage, epoch,
    attack) a unique key; the row's ``eps`` holds the radius exactly."""
    return f"{attack}{CURVE_MARK}{radius:g}"


def columns_of(kind: str) -> dict[str, Column]:
    """The columns of "trials" or "evals"."""
    if kind == "trials":
        return TRIAL_COLUMNS
    if kind == "evals":
        return EVAL_COLUMNS
    raise SchemaError(f"unknown row kind {kind!r}; known: trials, evals")


def intervals(kind: str) -> list[Interval]:
    """The interval columns of "trials" or "evals", one per accuracy column."""
    return [Interval(name, column.n, *interval_names(name)) for name, column in columns_of(kind).items() if column.n]


def check_row(row: Mapping[str, Any], kind: str) -> None:
    """Raise SchemaError for a column not declared for ``kind`` (trials may add ``hp_<field>``
    columns) and for an accuracy outside [0, 1]. Derived columns are declared: a row read back
    from a file carries them, and the store recomputes them when it writes."""
    columns = columns_of(kind)
    for name, value in row.items():
        column = columns.get(name)
        if column is None:
            if kind == "trials" and name.startswith(HP_PREFIX):
                continue
            raise SchemaError(f"{kind}: column {name!r} is not declared in raysearch.schema")
        if column.unit == FRACTION and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and not 0.0 <= value <= 1.0:
            raise SchemaError(f"{kind}: {name} = {value} is not a fraction in [0, 1]")


def trial_row(*, experiment: str, trial_id: str, method: str, dataset: str, arch: str, eps_eval: float,
              num_workers: int, started_at: float, config: Mapping[str, Any]) -> dict[str, Any]:
    """A new trial's row: running, no epoch yet, every hyperparameter of ``config`` as its own
    ``hp_<field>`` column (numbers, strings and booleans), the whole config as JSON."""
    row: dict[str, Any] = {name: column.missing for name, column in TRIAL_COLUMNS.items()}
    row.update(schema_version=SCHEMA_VERSION, experiment=experiment, trial_id=trial_id, method=method,
               dataset=dataset, arch=arch, status=Status.RUNNING, eps_eval=eps_eval, epochs=0,
               num_workers=num_workers, started_at=started_at, stopped_early=False, parent_trial_id="",
               cloned_at_epoch=0, lineage_json="[]",
               config_json=json.dumps(dict(config), default=str))
    row.update({f"{HP_PREFIX}{k}": v for k, v in config.items() if isinstance(v, (int, float, str, bool))})
    return row


def eval_row(*, experiment: str, trial_id: str, method: str, dataset: str, stage: Stage, epoch: int,
             attack: str, family: str, threat: Threat, norm: str, eps: float, accuracy: float, n: int,
             eot_samples: int, scoring_calls: int, queries: int, restarts: int, iterations: int,
             protocol: Protocol, seconds: float) -> dict[str, Any]:
    """One (trial, stage, epoch, attack) result."""
    row = dict(schema_version=SCHEMA_VERSION, experiment=experiment, trial_id=trial_id, method=method,
               dataset=dataset, stage=Stage(stage), epoch=int(epoch), attack=attack, family=family,
               threat=Threat(threat), norm=norm, eps=float(eps), accuracy=float(accuracy), n=int(n),
               eot_samples=int(eot_samples), scoring_calls=int(scoring_calls), queries=int(queries),
               restarts=int(restarts), iterations=int(iterations), protocol=Protocol(protocol),
               seconds=float(seconds))
    check_row(row, "evals")
    return row


def hp_columns(columns) -> list[str]:
    """The ``hp_<field>`` columns among ``columns``."""
    return [c for c in columns if c.startswith(HP_PREFIX)]
