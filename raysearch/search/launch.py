"""``run(exp)``: one search from start to end. Connects to Ray, writes experiment.json, builds
the Ray Tune Tuner (Optuna searcher, optional early-stopping scheduler, one Train run per trial,
the results store kept current) or restores it for ``--resume``, runs it, prints the front and
hands the front's trials to the final evaluation."""
from __future__ import annotations

import dataclasses
import time

import optuna
import ray
import ray.tune

import search_spaces
from raysearch import data as data_mod
from raysearch import store
from raysearch.config import ExperimentConfig, default_config
from raysearch.search.cluster import LaunchError, concurrency, connect, quiet
from raysearch.search.final import final_evaluation
from raysearch.search.provenance import provenance
from raysearch.search.recorder import StoreCallback
from raysearch.search.schedulers import make_scheduler
from raysearch.search.searcher import OBJECTIVES, Searcher, make_sampler
from raysearch.search.summary import report
from raysearch.search.trial import run_trial


def run(exp: ExperimentConfig) -> int:
    """Run the search ``exp`` describes; 0 when it ran to its end. Raises LaunchError for a
    problem with the cluster or the experiment folder."""
    exp_dir = exp.exp_dir
    spec = data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval)
    space_data = search_spaces.load(exp.method)
    fixed = dict(exp.sets)
    space_data = {k: v for k, v in space_data.items() if k not in fixed}
    space = search_spaces.to_optuna(space_data, spec.eps_scale)
    quiet(exp.verbose)
    dashboard_url = connect(exp)
    try:
        resources = ray.cluster_resources()
        n_conc = concurrency(exp, resources)
        print(f"raysearch: {exp.method} on {exp.dataset}, {exp.num_samples} trials × {exp.max_epochs} epochs, "
              f"{n_conc} at a time ({exp.workers_per_trial} worker(s) each), sampler {exp.sampler}", flush=True)
        print(f"  Ray dashboard: {dashboard_url or 'off'}   results: {exp_dir}", flush=True)
        if not exp.resume:
            exp_dir.mkdir(parents=True, exist_ok=False)
            store.write_json(exp_dir / store.EXPERIMENT, provenance(exp, space_data, resources))
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
        if exp.final_eval:
            final_evaluation(exp)
        print(f"\nresults: {exp_dir}\n  trials.parquet, evals.parquet, experiment.json")
        print(f"dashboard: streamlit run dashboard/app.py -- --results {exp.storage_path}")
        return 0
    finally:
        ray.shutdown()


def _new_tuner(exp: ExperimentConfig, trainable, space: dict, callback: StoreCallback,
               n_conc: int) -> ray.tune.Tuner:
    """A fresh search: its Optuna study in ``<experiment>/optuna.db``, the method's defaults as
    the first trial where the search space holds them."""
    exp_dir = exp.exp_dir
    study_storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
    defaults = dataclasses.asdict(default_config(exp.method, data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval)))
    start = {k: defaults[k] for k in space if search_spaces.contains(space[k], defaults[k])}
    searcher = Searcher(space=space, metric=list(OBJECTIVES), mode=["max", "max"],
                        sampler=make_sampler(exp.sampler, exp.seed, exp.num_samples),
                        storage=study_storage, study_name=exp.name,
                        points_to_evaluate=[start] if len(start) == len(space) else None)
    scheduler = make_scheduler(exp)
    return ray.tune.Tuner(
        trainable,
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
