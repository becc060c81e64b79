"""``--scheduler mopbt``: population-based training with Pareto ranking (MO-PBT, Dushatskiy et
al. 2023), on clean and robust accuracy.

A population of --num-samples trials starts from random samples of the search space (Optuna is
not used: the population's own selection is the search). Every --perturbation-interval epochs a
trial, on a fresh proxy result, is placed among the population's latest results by
non-dominated sorting, crowding distance inside a front (``ranking.crowding_order``). If it is
in the bottom quarter it *exploits* a trial drawn from the top quarter: the parent's latest
Ray Train checkpoint is copied under ``<experiment>/pbt/<trial>/`` and becomes the trial's
starting point (``raysearch.search.trial`` starts a new Train run from it), and it *explores*:
the parent's hyperparameters, each resampled with probability 1/4 or else moved by a factor of
0.8 or 1.2 (categorical values: to a neighbouring choice), always kept inside the search space
(clipped to its bounds, on its grid, log scales perturbed multiplicatively). The trial's config
carries what it cloned (``CLONE_KEY``), so a resumed search restarts it from the same state.

Ray Tune's ``PopulationBasedTraining`` supplies the mechanics (the per-trial state, pausing a
trial and restarting it with a new config); its single-metric ranking and its Tune-checkpoint
exploit are replaced here, because a trial's checkpoints are Ray Train's, not Tune's.
Population members should all fit at once (--num-samples no larger than the trials the cluster
runs together): the population then trains side by side and no trial waits.
"""
from __future__ import annotations

import math
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna.distributions as od
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

import search_spaces
from raysearch import data as data_mod
from raysearch.search.schedulers import CLONE_KEY
from raysearch.search.schedulers.moasha import proxy_values
from raysearch.search.schedulers.ranking import crowding_order
from trainables import REGISTRY

if TYPE_CHECKING:
    from raysearch.config import ExperimentConfig

PBT_DIR = "pbt"  # <experiment>/pbt/<trial>/: the parents' checkpoints each clone started from
QUANTILE = 0.25  # bottom and top fractions of the population
RESAMPLE_PROBABILITY = 0.25
FACTORS = (0.8, 1.2)


def space_data(exp: ExperimentConfig) -> dict[str, dict]:
    """The method's search-space entries as searched on the experiment's data set (a method may
    adapt them per data set), less the fields fixed with --set."""
    fixed = dict(exp.sets)
    entries = {k: v for k, v in search_spaces.load(exp.method).items() if k not in fixed}
    return REGISTRY[exp.method].search_space(entries, data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval))


def search_space(exp: ExperimentConfig) -> dict[str, od.BaseDistribution]:
    """``space_data`` as Optuna distributions on the data set's scale: the space every trial's
    values come from (Optuna's, or MO-PBT's samples and perturbations)."""
    spec = data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval)
    return search_spaces.to_optuna(space_data(exp), spec.eps_scale)


def _on_grid(dist, value):
    """``value`` clipped to the distribution's bounds and rounded onto its step grid (ints are
    ints)."""
    value = min(max(value, dist.low), dist.high)
    if getattr(dist, "step", None):
        value = dist.low + round((value - dist.low) / dist.step) * dist.step
        value = min(max(value, dist.low), dist.high)
    return int(round(value)) if isinstance(dist, od.IntDistribution) else float(value)


def sample(dist: od.BaseDistribution, rng: random.Random) -> Any:
    """A random value of ``dist`` (log-uniform on a log scale)."""
    if isinstance(dist, od.CategoricalDistribution):
        return rng.choice(dist.choices)
    if dist.log:
        return _on_grid(dist, math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
    return _on_grid(dist, rng.uniform(dist.low, dist.high))


def perturb(dist: od.BaseDistribution, value: Any, rng: random.Random) -> Any:
    """PBT's explore step for one hyperparameter, kept inside ``dist``."""
    if rng.random() < RESAMPLE_PROBABILITY:
        return sample(dist, rng)
    if isinstance(dist, od.CategoricalDistribution):
        i = dist.choices.index(value) + rng.choice((-1, 1))
        return dist.choices[min(max(i, 0), len(dist.choices) - 1)]
    factor = rng.choice(FACTORS)
    new = _on_grid(dist, value * factor)
    if isinstance(dist, od.IntDistribution) and new == value:  # a small int would never move
        new = _on_grid(dist, value + (1 if factor > 1 else -1) * (dist.step or 1))
    return new


def explore(config: dict, space: dict[str, od.BaseDistribution],
            rng: random.Random) -> tuple[dict, dict[str, list]]:
    """(the perturbed config, {hp: [old, new]} for each value that changed)."""
    new = {k: v for k, v in config.items() if k != CLONE_KEY}
    changed = {}
    for key, dist in space.items():
        new[key] = perturb(dist, config[key], rng)
        if new[key] != config[key]:
            changed[key] = [config[key], new[key]]
    return new, changed


def initial_configs(space: dict[str, od.BaseDistribution], n: int, seed: int,
                    start: dict | None = None) -> list[dict]:
    """The population's first configs: ``start`` (the method's defaults) when given, then random
    samples of the space (seeded)."""
    rng = random.Random(seed)
    configs = [dict(start)] if start else []
    while len(configs) < n:
        configs.append({k: sample(d, rng) for k, d in space.items()})
    return configs[:n]


def _keep_pbt_explore(config: dict) -> dict:
    """Ray's PBT requires an explore function; ours is ``MOPBT._get_new_config``."""
    return config


class MOPBT(PopulationBasedTraining):
    """The Ray Tune scheduler. ``exp_dir``: where the parents' checkpoints are copied."""

    def __init__(self, space: dict[str, od.BaseDistribution], exp_dir: Path, interval: int, max_epochs: int,
                 seed: int):
        super().__init__(time_attr="epoch", metric="robust_acc", mode="max", perturbation_interval=interval,
                         custom_explore_fn=_keep_pbt_explore, quantile_fraction=QUANTILE, log_config=False,
                         require_attrs=False)
        self.space, self.exp_dir, self.max_epochs = space, Path(exp_dir), max_epochs
        self.rng = random.Random(seed)

    def on_trial_add(self, tune_controller, trial: Trial):
        super().on_trial_add(tune_controller, trial)
        # a restored search: a trial's next perturbation is an interval after its last one
        epoch = int((trial.last_result or {}).get("epoch") or 0)
        self._trial_state[trial].last_perturbation_time = epoch - epoch % self._perturbation_interval

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        measured = proxy_values(result)
        if measured is None or measured[0] != result["epoch"] or result["epoch"] >= self.max_epochs:
            return TrialScheduler.CONTINUE  # decide on fresh accuracies only, never at the end
        state = self._trial_state[trial]
        epoch = int(result["epoch"])
        if epoch - state.last_perturbation_time < self._perturbation_interval:
            return TrialScheduler.CONTINUE
        self._save_trial_state(state, epoch, result, trial)
        state.last_perturbation_time = epoch
        lower, upper = self._quantiles()
        if trial in lower and self._exploit(tune_controller, trial, self.rng.choice(upper)):
            return TrialScheduler.NOOP  # paused; Tune restarts it with its new config
        return TrialScheduler.CONTINUE

    def _quantiles(self) -> tuple[list[Trial], list[Trial]]:
        """(bottom, top) quarter of the unfinished trials with a ranked result, by Pareto rank
        and crowding distance; each at most half the population."""
        ranked = [t for t, s in self._trial_state.items() if s.last_result is not None and not t.is_finished()]
        if len(ranked) <= 1:
            return [], []
        points = [(self._trial_state[t].last_result["clean_acc"], self._trial_state[t].last_result["robust_acc"])
                  for t in ranked]
        order = [ranked[i] for i in crowding_order(points)]
        k = min(math.ceil(len(order) * QUANTILE), len(order) // 2)
        return order[len(order) - k:], order[:k]

    def _exploit(self, tune_controller, trial: Trial, parent: Trial) -> bool:
        """Restart ``trial`` from a copy of ``parent``'s latest checkpoint with perturbed copies
        of its hyperparameters; False (nothing changed) if that checkpoint is gone or is the
        parent's last epoch (a clone of it would have nothing left to train)."""
        parent_result = parent.last_result or {}
        source = parent_result.get("checkpoint_path")
        clone = dict(trial.config.get(CLONE_KEY) or {})
        clones = int(clone.get("clones", 0)) + 1
        epoch = int(parent_result.get("epoch") or 0)
        if epoch >= self.max_epochs:
            return False
        seed = self.exp_dir / PBT_DIR / trial.trial_id / f"{clones}-{parent.trial_id}-epoch{epoch}"
        try:
            if seed.exists():
                shutil.rmtree(seed)
            shutil.copytree(source, seed)
        except (OSError, TypeError):  # the parent's checkpoint was replaced meanwhile: skip, as Ray's PBT does
            shutil.rmtree(seed, ignore_errors=True)
            return False
        new_config, changed = explore(parent.config, self.space, self.rng)
        lineage = [*(parent.config.get(CLONE_KEY) or {}).get("lineage", []),
                   {"epoch": epoch, "parent": parent.trial_id, "changed": changed}]
        new_config[CLONE_KEY] = {"seed": str(seed.relative_to(self.exp_dir)), "clones": clones, "lineage": lineage}
        print(f"  trial {trial.trial_id} clones trial {parent.trial_id} at epoch {epoch}: "
              + (", ".join(f"{k} {a:.4g} -> {b:.4g}" if isinstance(a, float) else f"{k} {a} -> {b}"
                           for k, (a, b) in changed.items()) or "same values"), flush=True)
        tune_controller.pause_trial(trial, should_checkpoint=False)
        trial.set_experiment_tag(f"{self._trial_state[trial].orig_tag}@clone{clones}")
        trial.set_config(new_config)
        state = self._trial_state[trial]
        # ranked as what it now is, the parent's state, until it reports again
        state.last_result, state.last_train_time, state.last_perturbation_time = dict(parent_result), epoch, epoch
        self._num_perturbations += 1
        return True


def make_scheduler(exp: ExperimentConfig) -> MOPBT:
    return MOPBT(search_space(exp), exp.exp_dir, exp.perturbation_interval, exp.max_epochs, exp.seed)
