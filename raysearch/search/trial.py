"""One trial of a search: a Ray Tune function trainable that drives one Ray Train run of torch
DDP workers (``raysearch.worker.train_loop``) and reports the run's outcome to Tune."""
from __future__ import annotations

import json
import math
import time
import traceback
from typing import Any

import ray
import ray.train
import ray.tune

from raysearch import trial_io
from raysearch.config import ExperimentConfig
from raysearch.schema import Status
from raysearch.search.schedulers import CLONE_KEY, POPULATION_SCHEDULERS

TRAIN_DIR = "train"  # <experiment>/train/<trial_id>/: each trial's Ray Train run and checkpoints


def loop_config(exp: ExperimentConfig, sampled: dict[str, Any], trial_id: str, seed: str = "") -> dict[str, Any]:
    """What every Train worker of the trial gets (``raysearch.worker.train_loop``'s argument).
    The Train controller unpickles it too, which imports ``raysearch.config`` but not torch.
    ``seed``: a checkpoint folder a new Train run starts from (a MO-PBT clone's copy of its
    parent's); a run that has checkpoints of its own resumes from those instead."""
    return {"experiment": exp, "sampled": sampled, "trial_id": trial_id, "seed_checkpoint": seed}


def train_run(exp: ExperimentConfig, config: dict[str, Any], trial_id: str) -> tuple[str, dict[str, Any], str]:
    """(Train run name, hyperparameters, seed checkpoint folder or "") of a trial's config. A
    trial that cloned another (MO-PBT) trains as a new Train run named after the copy it starts
    from, so a restart resumes the clone's own run, never the run from before the clone."""
    clone = config.get(CLONE_KEY) or {}
    sampled = {k: v for k, v in config.items() if k != CLONE_KEY}
    if not clone.get("seed"):
        return trial_id, sampled, ""
    seed = exp.exp_dir / clone["seed"]
    return f"{trial_id}-clone{seed.name}", sampled, str(seed.resolve())


def _trainer_without_datasets() -> type:
    """Ray Train's ``DataParallelTrainer`` without its Ray Data hook: the workers read their own
    shards of the data set (``raysearch.data``), and the hook starts a dataset-manager actor for
    every Train run, a process start (≈ 2 CPU-s) per trial that serves nothing. The trainer
    itself never leaves this process; its callbacks go to the Train controller as they are."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class Trainer(DataParallelTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return callbacks if self.datasets else [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer


def run_trial(config: dict[str, Any], exp: ExperimentConfig) -> None:
    """Tune function trainable: drives one Ray Train run (``TorchTrainer``'s, with the process
    group set up by ``raysearch.ddp``, so the Train controller does not import torch) and re-emits
    its final metrics, so the last result Optuna sees is the trial's (after a resume Tune's last
    result can lag; see README, 'Why Ray is configured as it is'). ``config``: the sampled
    hyperparameters (with, for a MO-PBT clone, what it cloned: ``train_run``)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysearch.ddp import LeanTorchConfig
    from raysearch.worker import train_loop

    trial_id = ray.tune.get_context().get_trial_id()
    run_name, sampled, seed = train_run(exp, config, trial_id)
    started = time.time()
    use_gpu = exp.gpus_per_worker > 0
    per_worker = {"CPU": exp.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = exp.gpus_per_worker
    trainer = _trainer_without_datasets()(
        train_loop,
        train_loop_config=loop_config(exp, sampled, trial_id, seed),
        backend_config=LeanTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=exp.workers_per_trial, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=run_name,  # stable across restarts: a rerun resumes from the last checkpoint
            storage_path=str(exp.exp_dir / TRAIN_DIR),
            failure_config=ray.train.FailureConfig(max_failures=exp.max_failures),
            # a population's trials copy each other's latest checkpoint: keep the one before it
            # too, so the latest reported is still there while its successor is being written
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2 if exp.scheduler in POPULATION_SCHEDULERS else 1),
            callbacks=[TuneReportCallback()],
        ),
    )
    final: dict[str, Any] = {"final": True}
    try:
        result = trainer.fit()
        metrics = dict(result.metrics or {})
        final.update({k: metrics.get(k) for k in ("epoch", "clean_acc", "robust_acc", "nodes", "node_ids", "eval_n")})
        final["checkpoint_path"] = result.checkpoint.path if result.checkpoint else ""
        if result.checkpoint:
            with result.checkpoint.as_directory() as d:
                final["history_json"] = json.dumps(trial_io.load_meta(d).get("history", []))
        if metrics.get("diverged"):
            final.update(status=Status.FAILED, error=f"diverged: {metrics['diverged']}")
        elif result.checkpoint is None:
            final.update(status=Status.FAILED, error="no epoch completed")
        else:
            final["status"] = Status.COMPLETED
    except Exception as e:  # a trial that raises is recorded as failed; the search goes on
        cause = e.__cause__ or e
        error = f"{type(cause).__name__}: {cause}".splitlines()[0]
        # Ray Train's error only says that workers failed; a worker's own error says why (user
        # code's comes as its traceback text, whose last line is "Type: message")
        failures = [str(f).strip() for f in (getattr(e, "worker_failures", None) or {}).values()]
        if failures and failures[0]:
            lines = failures[0].splitlines()
            error = lines[-1] if lines[0].startswith("Traceback") else lines[0]
        final.update(status=Status.FAILED, error=error[:500],
                     traceback="".join(traceback.format_exception(e))[-4000:])
    if final["status"] == Status.FAILED:
        final["clean_acc"] = final["robust_acc"] = math.nan
    final["wall_s"] = time.time() - started
    ray.tune.report(final)
