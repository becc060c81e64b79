"""Early-stopping schedulers, by ``--scheduler`` name: each a factory from the experiment config
to a Ray Tune scheduler (or None: every trial runs all its epochs). A new scheduler is one module
here and one line in ``SCHEDULERS``; the command line's choices are its keys.

Factories import Ray when called, not when this registry is imported: the command line reads
the names before Ray is imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from raysearch.search.schedulers import asha

if TYPE_CHECKING:
    from raysearch.config import ExperimentConfig


def no_scheduler(exp: ExperimentConfig) -> None:
    """``--scheduler none``: no early stopping."""
    return None


SCHEDULERS: dict[str, Callable[[ExperimentConfig], Any]] = {
    "none": no_scheduler,
    "asha": asha.make_scheduler,
}


def make_scheduler(exp: ExperimentConfig):
    """The Ray Tune scheduler ``exp.scheduler`` names, or None."""
    return SCHEDULERS[exp.scheduler](exp)
