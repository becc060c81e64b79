"""``run(exp)``: one search from start to end. Connects to Ray, writes experiment.json, builds
the Ray Tune Tuner (Optuna searcher with an optional early-stopping scheduler, or a MO-PBT
population; one Train run per trial; the results store kept current) or restores it for
``--resume``, runs it, prints the front and hands the front's trials to the final evaluation."""
from __future__ import annotations

import dataclasses
import time
import warnings

import optuna
import ray
import ray.tune
from ray.tune.search import BasicVariantGenerator

import search_spaces
from raysearch import data as data_mod
from raysearch import store
from raysearch.config import ExperimentConfig, default_config
from raysearch.search.cluster import LaunchError, concurrency, connect, quiet
from raysearch.search.final import final_evaluation
from raysearch.search.provenance import provenance
from raysearch.search.recorder import StoreCallback
from raysearch.search.schedulers import POPULATION_SCHEDULERS, make_scheduler
from raysearch.search.schedulers.mopbt import initial_configs, search_space, space_data
from raysearch.search.searcher import OBJECTIVES, Searcher, make_sampler
from raysearch.search.summary import report
from raysearch.search.trial import run_trial


def run(exp: ExperimentConfig) -> int:
    """Run the search ``exp`` describes; 0 when it ran to its end, 1 when the final evaluation
    of a candidate failed (the search's results are stored). Raises LaunchError for a
    problem with the cluster or the experiment folder."""
    exp_dir = exp.exp_dir
    entries = space_data(exp)  # the search space as searched on this data set (experiment.json)
    space = search_space(exp)
    quiet(exp.verbose)
    dashboard_url = connect(exp)
    try:
        resources = ray.cluster_resources()
        n_conc = concurrency(exp, resources)
        population = exp.scheduler in POPULATION_SCHEDULERS
        print(f"raysearch: {exp.method} on {exp.dataset}, {exp.num_samples} trials × {exp.max_epochs} epochs, "
              f"{n_conc} at a time ({exp.workers_per_trial} worker(s) each), "
              + (f"{exp.scheduler} population (no Optuna)" if population else f"sampler {exp.sampler}"), flush=True)
        if population and n_conc < exp.num_samples:
            print(f"  note: the population of {exp.num_samples} does not fit at once ({n_conc}); later members "
                  "start when earlier ones finish", flush=True)
        print(f"  Ray dashboard: {dashboard_url or 'off'}   results: {exp_dir}", flush=True)
        if not exp.resume:
            exp_dir.mkdir(parents=True, exist_ok=False)
            store.write_json(exp_dir / store.EXPERIMENT, provenance(exp, entries, resources))
        # the trial's driver reserves nothing real: its Train workers hold the trial's resources
        trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, exp=exp), {"cpu": 0, "memory": 1})
        callback = StoreCallback(exp, exp_dir)
        if exp.resume:
            if not ray.tune.Tuner.can_restore(str(exp_dir)):
                raise LaunchError(f"--resume: {exp_dir} holds no restorable search state")
            tuner = ray.tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True,
                                           restart_errored=False)
            # a restored Tuner keeps its own callbacks list: attach ours for this session
            tuner._local_tuner._run_config.callbacks = [callback]
        else:
            tuner = _new_tuner(exp, trainable, space, callback, n_conc)
        t0 = time.time()
        tuner.fit()
        print(f"search finished in {time.time() - t0:.0f}s", flush=True)
        report(exp_dir)
        evaluated = final_evaluation(exp) if exp.final_eval else True
        print(f"\nresults: {exp_dir}\n  trials.parquet, evals.parquet, experiment.json")
        print(f"dashboard: streamlit run dashboard/app.py -- --results {exp.storage_path}")
        return 0 if evaluated else 1  # the search's results are stored either way
    finally:
        ray.shutdown()


def _new_tuner(exp: ExperimentConfig, trainable, space: dict, callback: StoreCallback,
               n_conc: int) -> ray.tune.Tuner:
    """A fresh search: its Optuna study in ``<experiment>/optuna.db``, the method's defaults as
    the first trial where the search space holds them; for a population scheduler (MO-PBT) no
    Optuna, the population drawn from the space at random (seeded) after the defaults."""
    exp_dir = exp.exp_dir
    defaults = dataclasses.asdict(default_config(exp.method, data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval)))
    start = {k: defaults[k] for k in space if search_spaces.contains(space[k], defaults[k])}
    start = start if len(start) == len(space) else None
    param_space = None
    if exp.scheduler in POPULATION_SCHEDULERS:
        # Ray's PBT advice to reuse actors does not apply: a trial blocked in its Train run's fit()
        # cannot be reset in place (see README, 'Why Ray is configured as it is')
        warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
        searcher = BasicVariantGenerator(
            points_to_evaluate=initial_configs(space, exp.num_samples, exp.seed, start))
        param_space = {k: None for k in space}  # each trial's values: one of the points above
    else:
        searcher = Searcher(space=space, metric=list(OBJECTIVES), mode=["max", "max"],
                            sampler=make_sampler(exp.sampler, exp.seed, exp.num_samples),
                            storage=optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}"),
                            study_name=exp.name, points_to_evaluate=[start] if start else None)
    scheduler = make_scheduler(exp)
    return ray.tune.Tuner(
        trainable, param_space=param_space,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, num_samples=exp.num_samples,
                                        max_concurrent_trials=n_conc, scheduler=scheduler,
                                        # a finished trial's driver process (imports done) drives
                                        # the next trial; a scheduler-stopped one cannot be reset,
                                        # so no reuse with a scheduler
                                        reuse_actors=scheduler is None),
        run_config=ray.tune.RunConfig(name=exp.name, storage_path=exp.storage_path, verbose=0,
                                      callbacks=[callback],
                                      failure_config=ray.tune.FailureConfig(max_failures=2)),
    )
