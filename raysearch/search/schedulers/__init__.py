"""Schedulers, by ``--scheduler`` name: each a factory from the experiment config to a Ray Tune
scheduler (or None: every trial runs all its epochs). A new scheduler is one module here and one
line in ``SCHEDULERS``; the command line's choices are its keys.

* ``moasha``: early stopping by Pareto ranking (``moasha``); Optuna samples the trials.
* ``mopbt``: population-based training with Pareto ranking (``mopbt``); no Optuna: the
  population starts from random samples of the search space and evolves by cloning and
  perturbing (``POPULATION_SCHEDULERS``).

Factories import Ray when called, not when this registry is imported: the command line reads
the names before Ray is imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from raysearch.config import ExperimentConfig


def no_scheduler(exp: ExperimentConfig) -> None:
    """``--scheduler none``: no early stopping."""
    return None


def _moasha(exp: ExperimentConfig):
    from raysearch.search.schedulers import moasha

    return moasha.make_scheduler(exp)


def _mopbt(exp: ExperimentConfig):
    from raysearch.search.schedulers import mopbt

    return mopbt.make_scheduler(exp)


SCHEDULERS: dict[str, Callable[[ExperimentConfig], Any]] = {
    "none": no_scheduler,
    "moasha": _moasha,
    "mopbt": _mopbt,
}
# schedulers that evolve a population themselves: Optuna does not sample their trials
POPULATION_SCHEDULERS = frozenset({"mopbt"})
# the key of a trial's config under which MO-PBT keeps what the trial cloned: {"seed": the
# parent's checkpoint copied for it (relative to the experiment folder), "clones": how many
# times it cloned, "lineage": [{"epoch", "parent", "changed": {hp: [old, new]}}, ...]}; it
# travels with the config so that a resumed search restarts the trial from the same state
CLONE_KEY = "_pbt"


def make_scheduler(exp: ExperimentConfig):
    """The Ray Tune scheduler ``exp.scheduler`` names, or None."""
    return SCHEDULERS[exp.scheduler](exp)
