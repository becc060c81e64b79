"""Ray glue of a search: connect to Ray, build the Optuna searcher and the Tuner, run one Ray
Train run of torch DDP workers per trial (``raysearch.ddp`` sets up their process group), keep
the Parquet store current, print the front.

Resources: a Tune trial is only the Train driver and reserves nothing; its Train workers
reserve the CPUs/GPUs in their own placement group; concurrency is derived from the cluster's
resources so trials queue instead of deadlocking (see RAY.md beside this project's docs).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import optuna
import ray
import ray._private.ray_constants as ray_constants
import ray.train
import ray.tune
from ray.tune.search.optuna import OptunaSearch

import search_spaces
from raysearch import data as data_mod
from raysearch import perf, store, trial_io
from raysearch.config import ExperimentConfig, default_config, trial_config
from raysearch.pareto import hypervolume_2d, pareto_mask

OBJECTIVES = ("clean_acc", "robust_acc")
TRAIN_DIR = "train"  # <experiment>/train/<trial_id>/: each trial's Ray Train run and checkpoints
INTERRUPTED = "interrupted: the search was killed before it saved this trial; another trial took its place"


class LaunchError(Exception):
    """A problem with the cluster or the experiment folder; one line for the user."""


# ---------------------------------------------------------------- the Tune trial (Train driver)

def run_trial(config: dict[str, Any], exp: dict[str, Any]) -> None:
    """Tune function trainable: drives one Ray Train run (``TorchTrainer``'s, with the process
    group set up by ``raysearch.ddp``, so the Train controller does not import torch) and re-emits
    its final metrics, so the last result Optuna sees is the trial's (RAY.md: after a resume
    Tune's last result can lag)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysearch.ddp import LeanTorchConfig
    from raysearch.worker import train_loop

    trial_id = ray.tune.get_context().get_trial_id()
    started = time.time()
    use_gpu = exp["gpus_per_worker"] > 0
    per_worker = {"CPU": exp["cpus_per_worker"]}
    if use_gpu:
        per_worker["GPU"] = exp["gpus_per_worker"]
    trainer = DataParallelTrainer(
        train_loop,
        train_loop_config={"method": exp["method"], "experiment": exp, "sampled": config, "trial_id": trial_id},
        backend_config=LeanTorchConfig(),
        scaling_config=ray.train.ScalingConfig(num_workers=exp["workers_per_trial"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=trial_id,  # stable across restarts: a rerun resumes from the last checkpoint
            storage_path=str(Path(exp["exp_dir"]) / TRAIN_DIR),
            failure_config=ray.train.FailureConfig(max_failures=exp["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
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
            final.update(status=store.FAILED, error=f"diverged: {metrics['diverged']}")
        elif result.checkpoint is None:
            final.update(status=store.FAILED, error="no epoch completed")
        else:
            final["status"] = store.COMPLETED
    except Exception as e:  # a trial that raises is recorded as failed; the search goes on
        cause = e.__cause__ or e
        error = f"{type(cause).__name__}: {cause}".splitlines()[0]
        # Ray Train's error only says that workers failed; a worker's own error says why (user
        # code's comes as its traceback text, whose last line is "Type: message")
        failures = [str(f).strip() for f in (getattr(e, "worker_failures", None) or {}).values()]
        if failures and failures[0]:
            lines = failures[0].splitlines()
            error = lines[-1] if lines[0].startswith("Traceback") else lines[0]
        final.update(status=store.FAILED, error=error[:500],
                     traceback="".join(traceback.format_exception(e))[-4000:])
    if final["status"] == store.FAILED:
        final["clean_acc"] = final["robust_acc"] = math.nan
    final["wall_s"] = time.time() - started
    # an early-stopping scheduler's metric must be in every result (Tune checks it)
    final["clean_x_robust"] = _product(final.get("clean_acc"), final.get("robust_acc"))
    ray.tune.report(final)


def _product(a, b) -> float:
    return math.nan if a is None or b is None else float(a) * float(b)


# ---------------------------------------------------------------- Optuna: failures are failures

class Searcher(OptunaSearch):
    """OptunaSearch that tells Optuna FAIL (with the reason as a user attribute) for a trial that
    raised, diverged or reported a non-finite objective; the stock one leaves such a trial
    RUNNING forever, which skews the sampler (RAY.md)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        values = [None if not result else result.get(m) for m in OBJECTIVES]
        failed = error or (result or {}).get("status") == store.FAILED or any(
            v is None or not math.isfinite(v) for v in values)
        if not failed or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # told before the driver restarted (--resume)
            return
        reason = (result or {}).get("error") or ("the trial raised" if error else "non-finite objective")
        self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, "fail_reason", str(reason)[:1000])
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str):
        """After a killed driver (--resume): an Optuna trial asked after the search state was
        last saved belongs to no Tune trial (Tune asks for a new one in its place) and would stay
        RUNNING forever; it is failed with the reason."""
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id not in known:
                self._ot_study._storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
                self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def front_gamma(n: int) -> int:
    """How many of n finished trials TPE models as good: a quarter (at least 2, at most 25).
    Optuna's multi-objective default, a tenth, is one trial until the tenth, and TPE then samples
    around a single point of the front instead of along it (bench/search_efficiency.py)."""
    return min(max(2, math.ceil(0.25 * n)), 25)


def make_sampler(name: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar (Optuna's default): concurrent trials see each other as running, so
        # trials asked together are not drawn from the same spot
        with warnings.catch_warnings():  # gamma is deprecated (Optuna 4.9) but kept until Optuna 6
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(num_samples // 3, 1)),
                                              multivariate=True, constant_liar=True, gamma=front_gamma)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, num_samples // 3)))
    if name == "gp":
        # the default: Gaussian-process regression with log expected hypervolume improvement
        # (qLogEHVI over the trials still running, so concurrent trials are not drawn alike);
        # it beat TPE in 6/6 seeds and random search in 5/6 at N=10 (bench/search_efficiency.py)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(5, max(num_samples // 3, 1)))
    return optuna.samplers.RandomSampler(seed=seed)


def make_scheduler(exp: ExperimentConfig):
    """``--scheduler asha``: asynchronous successive halving (Li et al., MLSys 2020) on the product
    of clean and robust accuracy, one rung per grace_period·reduction_factor^k epochs. A product
    ranks a trial low when either accuracy is low, so it also stops trials at the front's
    extremes (very robust, or very accurate): a budget saving bought with some front coverage."""
    if exp.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # stop_last_trials=False: a trial that reaches max_t finishes by itself (its final report
    # and checkpoint) instead of being stopped at its last epoch
    return ASHAScheduler(time_attr="epoch", metric="clean_x_robust", mode="max", max_t=exp.max_epochs,
                         grace_period=exp.grace_period, reduction_factor=exp.reduction_factor,
                         stop_last_trials=False)


# ---------------------------------------------------------------- the results store, kept current

class StoreCallback(ray.tune.Callback):
    """Writes trials.parquet / evals.parquet as results arrive (atomically) and prints progress.
    Rows are keyed (trial, stage, epoch, attack), so epochs re-reported after a resume replace
    their earlier rows instead of being counted twice."""

    def __init__(self, exp: ExperimentConfig, exp_dir: Path, searched: list[str]):
        self.exp, self.exp_dir, self.searched = exp, exp_dir, searched
        self.trials: dict[str, dict] = {r["trial_id"]: r for r in store.read_rows(exp_dir / store.TRIALS)}
        self.evals: dict[tuple, dict] = {
            (r["trial_id"], r["stage"], r["epoch"], r["attack"]): r for r in store.read_rows(exp_dir / store.EVALS)}
        self.t0 = time.time()
        self.reconciled = False

    def on_step_begin(self, iteration, trials, **info):
        """Once, after --resume: a trial still marked running that the restored search does not
        know started after the search state was last saved; it will not run again."""
        if self.reconciled:
            return
        self.reconciled = True
        live = {t.trial_id for t in trials}
        lost = [r for r in self.trials.values() if r["status"] == store.RUNNING and r["trial_id"] not in live]
        for row in lost:
            row.update(status=store.FAILED, error=INTERRUPTED, finished_at=time.time())
        if lost:
            self._write()

    def _row(self, trial) -> dict:
        row = self.trials.get(trial.trial_id)
        if row is None:
            cfg = dataclasses.asdict(trial_config(self.exp.method, data_mod.SPECS[self.exp.dataset], trial.config,
                                                  dict(self.exp.sets), self.exp.max_epochs, self.exp.arch))
            row = {"experiment": self.exp.name, "trial_id": trial.trial_id, "method": self.exp.method,
                   "dataset": self.exp.dataset, "arch": self.exp.arch, "status": store.RUNNING, "error": None,
                   "eps_eval": self.exp.eps_eval, "epochs": 0, "num_workers": self.exp.workers_per_trial,
                   "started_at": time.time(), "config_json": json.dumps(cfg, default=str), "stopped_early": False,
                   **{f"{store.HP_PREFIX}{k}": v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}}
            self.trials[trial.trial_id] = row
        return row

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)
        self._write()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        if result.get("final"):
            self._finish(row, result)
        elif "epoch" in result:
            row.update(epochs=int(result["epoch"]), clean_acc=result["clean_acc"], robust_acc=result["robust_acc"],
                       nodes=result.get("nodes"), checkpoint=result.get("checkpoint_path") or row.get("checkpoint"),
                       node_ids=result.get("node_ids"),
                       # the latest epoch a restarted worker group resumed from (0: never restarted)
                       resumed_from=max(row.get("resumed_from") or 0, int(result.get("resumed_from") or 0)))
            if "train_started_at" in result and not result.get("resumed_from"):
                # seconds from the trial's start to its first training step (Ray + process start-up)
                row["startup_s"] = result["train_started_at"] - row["started_at"]
            self._record_epoch(trial.trial_id, result)
            self._progress(trial, row, result)
        self._write()

    def _record_epoch(self, trial_id: str, result: dict):
        base = {"experiment": self.exp.name, "trial_id": trial_id, "method": self.exp.method,
                "dataset": self.exp.dataset, "stage": "trial", "epoch": int(result["epoch"]),
                "n": int(result.get("eval_n", 0)), "seconds": float(result.get("eval_s", math.nan))}
        self.evals[(trial_id, "trial", base["epoch"], "clean")] = {
            **base, "attack": "clean", "family": "clean", "threat": "clean", "norm": "none", "eps": math.nan,
            "accuracy": result["clean_acc"], "eot_samples": int(result.get("eval_eot", 1))}
        # keyed by the stored attack name, as the rows read back on --resume are
        attack = f"pgd{self.exp.eval_steps}_linf"
        self.evals[(trial_id, "trial", base["epoch"], attack)] = {
            **base, "attack": attack, "family": "pgd", "threat": "seen",
            "norm": "linf", "eps": self.exp.eps_eval, "accuracy": result["robust_acc"],
            "eot_samples": int(result.get("eval_eot", 1))}

    def on_trial_complete(self, iteration, trials, trial, **info):
        """A trial that ends without its driver's final report was stopped by the scheduler: it
        counts as completed with the metrics of the last epoch it ran (Optuna is told the same)."""
        row = self._row(trial)
        if row["status"] != store.RUNNING:
            return
        if not row.get("epochs"):
            row.update(status=store.FAILED, error="stopped before its first epoch ended", finished_at=time.time())
        else:
            row.update(status=store.COMPLETED, stopped_early=row["epochs"] < self.exp.max_epochs,
                       finished_at=time.time(), wall_s=time.time() - row["started_at"])
            devices = self.exp.workers_per_trial * (self.exp.gpus_per_worker or 1)
            row["device_s"] = row["wall_s"] * devices
            done = sum(r["status"] != store.RUNNING for r in self.trials.values())
            print(f"[{done}/{self.exp.num_samples}] trial {row['trial_id']} stopped early after {row['epochs']} "
                  f"epoch(s) in {row['wall_s']:.0f}s: clean {row['clean_acc']:.3f}  robust {row['robust_acc']:.3f}",
                  flush=True)
        self._write()

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if row["status"] == store.RUNNING:
            err = getattr(trial, "error_file", None)
            msg = "the trial's driver failed"
            if err and os.path.exists(err):
                lines = [ln for ln in Path(err).read_text().splitlines() if ln.strip()]
                msg = lines[-1][:500] if lines else msg
            row.update(status=store.FAILED, error=msg, finished_at=time.time())
            print(f"  trial {trial.trial_id} failed: {msg}", flush=True)
        self._write()

    def _finish(self, row: dict, result: dict):
        # epochs whose results were in flight when an earlier driver died (same keys: no duplicates)
        for epoch_result in json.loads(result.get("history_json") or "[]"):
            self._record_epoch(row["trial_id"], epoch_result)
        row.update(status=result["status"], error=result.get("error"), finished_at=time.time(),
                   wall_s=result.get("wall_s"), checkpoint=result.get("checkpoint_path") or row.get("checkpoint"))
        if result["status"] == store.COMPLETED:
            row.update(clean_acc=result["clean_acc"], robust_acc=result["robust_acc"], epochs=int(result["epoch"]),
                       nodes=result.get("nodes") or row.get("nodes"), node_ids=result.get("node_ids") or row.get("node_ids"))
        devices = self.exp.workers_per_trial * (self.exp.gpus_per_worker or 1)
        row["device_s"] = (row.get("wall_s") or 0.0) * devices
        done = sum(r["status"] != store.RUNNING for r in self.trials.values())
        what = (f"clean {row['clean_acc']:.3f}  robust {row['robust_acc']:.3f}" if result["status"] == store.COMPLETED
                else f"FAILED: {row['error']}")
        print(f"[{done}/{self.exp.num_samples}] trial {row['trial_id']} done in {row.get('wall_s', 0):.0f}s: {what}",
              flush=True)

    def _progress(self, trial, row, result):
        print(f"    trial {trial.trial_id} epoch {int(result['epoch'])}/{self.exp.max_epochs}: "
              f"clean {result['clean_acc']:.3f}  robust {result['robust_acc']:.3f}  "
              f"({time.time() - self.t0:.0f}s elapsed)", flush=True)

    def _write(self):
        store.write_trials(self.exp_dir, self.trials.values())
        store.write_evals(self.exp_dir, self.evals.values())


# ---------------------------------------------------------------- connect and size

def quiet(verbose: bool) -> None:
    """The CLI prints its own progress; Tune's tables and Optuna's per-trial lines are noise here."""
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def connect(exp: ExperimentConfig) -> str:
    """Connect (or start a local Ray on 127.0.0.1); returns the Ray dashboard URL."""
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")}
    if not exp.address:
        # a local machine is never preempted: skip Ray Train's per-trial watcher actor (one
        # process start fewer per trial); on a cluster of spot nodes it is what drains in time
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    env.update(perf.allocator_env(os.environ))
    # a reused driver actor waits this long (s) for the previous trial's thread to return; Tune's
    # 2 s can pass on a loaded machine, and a failed reset fails the next trial
    env["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    kwargs: dict[str, Any] = dict(runtime_env={"env_vars": env}, log_to_driver=exp.verbose,
                                  logging_level="INFO" if exp.verbose else "ERROR")
    try:
        if exp.address:
            # name the cluster to the placement-group cleaner too (see below): without it a
            # trial whose driver died with its node keeps its workers' resources forever
            address = exp.address
            if address == "auto":
                address = ray._private.services.canonicalize_bootstrap_address_or_die(address)
            if not address.startswith("ray://"):
                env["RAY_ADDRESS"] = address
            # "auto" stays "auto" here: with it Ray also picks up ~/.ray/auth_token by itself
            ctx = ray.init(address=exp.address, **kwargs)
        else:
            # On Linux Ray turns 127.0.0.1 into the host's routable IP and its GCS, raylet and
            # workers then listen on every interface; its single-machine mode (the default on
            # macOS/Windows) keeps the node on 127.0.0.1 and every listener on loopback. The
            # environment variable reaches the Ray processes started here; the constant was
            # already read by this one.
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
            ray_constants.ENABLE_RAY_CLUSTER = False
            # Ray Train's placement-group cleaner (it frees a stopped trial's workers) looks its
            # cluster up with the State API, which refuses to guess when several local Ray
            # instances run on the host: name ours, via a GCS port chosen here
            port = _free_port()
            os.environ[ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE] = str(port)
            env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
            try:
                ctx = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                               **kwargs)
            finally:
                os.environ.pop(ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE, None)
    except Exception as e:  # ray.init raises plain Exception on a start-up timeout; report it in one line
        raise LaunchError(f"could not connect to Ray at {exp.address or 'a new local instance'}: "
                          f"{str(e).splitlines()[0]}") from None
    return getattr(ctx, "dashboard_url", "") or ""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def concurrency(exp: ExperimentConfig, resources: dict[str, float]) -> int:
    """How many trials fit the cluster at once; errors now where a trial can never be placed."""
    need_cpu = exp.workers_per_trial * exp.cpus_per_worker
    need_gpu = exp.workers_per_trial * exp.gpus_per_worker
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if need_gpu and not have_gpu:
        raise LaunchError(f"--gpus-per-worker {exp.gpus_per_worker}: the Ray cluster has no GPUs "
                          f"(resources: {have_cpu:g} CPU); drop the flag to train on CPU")
    if need_gpu > have_gpu:
        raise LaunchError(f"a trial needs {need_gpu:g} GPUs ({exp.workers_per_trial} workers × "
                          f"{exp.gpus_per_worker:g}) but the cluster has {have_gpu:g}")
    if need_cpu > have_cpu:
        raise LaunchError(f"a trial needs {need_cpu:g} CPUs ({exp.workers_per_trial} workers × "
                          f"{exp.cpus_per_worker:g}) but the cluster has {have_cpu:g}")
    fits = [math.floor(have_cpu / need_cpu) if need_cpu else math.inf,
            math.floor(have_gpu / need_gpu) if need_gpu else math.inf]
    n = min(fits)
    n = exp.num_samples if n == math.inf else int(n)
    if exp.max_concurrent:
        n = min(n, exp.max_concurrent)
    return max(1, min(n, exp.num_samples))


def provenance(exp: ExperimentConfig, space: dict, resources: dict) -> dict:
    import torch

    def git_rev() -> str:
        try:
            return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                  cwd=Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = {}
    for mod in ("torch", "torchvision", "ray", "optuna", "pyarrow", "numpy", "normflows", "ot"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"schema_version": store.SCHEMA_VERSION, "config": dataclasses.asdict(exp),
            "objectives": list(OBJECTIVES), "search_space": space, "versions": versions, "git_revision": git_rev(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "hardware": {"cluster_resources": resources,
                         "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
            "created_at": time.time()}


# ---------------------------------------------------------------- the search

def run(exp: ExperimentConfig) -> int:
    exp_dir = Path(exp.storage_path) / exp.name
    spec = data_mod.SPECS[exp.dataset]
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
        exp_payload = {**dataclasses.asdict(exp), "exp_dir": str(exp_dir), "storage": exp.storage_path,
                       "eps_eval": exp.eps_eval}
        trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, exp=exp_payload), {"cpu": 0, "memory": 1})  # the driver reserves nothing real
        callback = StoreCallback(exp, exp_dir, list(space))
        if exp.resume:
            if not ray.tune.Tuner.can_restore(str(exp_dir)):
                raise LaunchError(f"--resume: {exp_dir} holds no restorable search state")
            tuner = ray.tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=True,
                                           restart_errored=False)
        else:
            study_storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
            defaults = dataclasses.asdict(default_config(exp.method, spec))
            start = {k: defaults[k] for k in space if search_spaces.contains(space[k], defaults[k])}
            searcher = Searcher(space=space, metric=list(OBJECTIVES), mode=["max", "max"],
                                sampler=make_sampler(exp.sampler, exp.seed, exp.num_samples),
                                storage=study_storage, study_name=exp.name,
                                points_to_evaluate=[start] if len(start) == len(space) else None)
            tuner = ray.tune.Tuner(
                trainable,
                tune_config=ray.tune.TuneConfig(search_alg=searcher, num_samples=exp.num_samples,
                                                max_concurrent_trials=n_conc, scheduler=make_scheduler(exp),
                                                # a finished trial's driver process (imports done)
                                                # drives the next trial; a scheduler-stopped one
                                                # cannot be reset, so no reuse with a scheduler
                                                reuse_actors=exp.scheduler == "none"),
                run_config=ray.tune.RunConfig(name=exp.name, storage_path=exp.storage_path, verbose=0,
                                              callbacks=[callback],
                                              failure_config=ray.tune.FailureConfig(max_failures=2)),
            )
        if exp.resume:
            # a restored Tuner keeps its own callbacks list: attach ours for this session
            tuner._local_tuner._run_config.callbacks = [callback]
        t0 = time.time()
        tuner.fit()
        print(f"search finished in {time.time() - t0:.0f}s", flush=True)
        report(exp_dir)
        if exp.final_eval:
            final_evaluation(exp, exp_dir)
        print(f"\nresults: {exp_dir}\n  trials.parquet, evals.parquet, experiment.json")
        print(f"dashboard: streamlit run dashboard/app.py -- --results {exp.storage_path}")
        return 0
    finally:
        ray.shutdown()


def final_evaluation(exp: ExperimentConfig, exp_dir: Path) -> None:
    """The full attack suite on the front's trials, on the test split, each trial a Ray task
    with a worker's resources (so candidates run side by side where the cluster has room, on a
    GPU when workers have one); prints a line as each finishes, then the tables and the fronts
    recomputed per attack. A failure here keeps the search's results as they are."""
    from raysearch import evaluate

    print(f"\nfinal evaluation: full attack suite on the Pareto candidates ({exp.final_eval_size} test images, "
          f"EOT {exp.eot_samples} for randomized predictors)", flush=True)
    try:
        summary = evaluate.evaluate_experiment(exp_dir, subset=exp.final_eval_size, eot=exp.eot_samples,
                                               data_dir=exp.data_dir, runner=ray_runner(exp),
                                               # one intra-op thread per CPU: on a busy CPU the suite
                                               # ran ~9x faster with one than with torch's default
                                               threads=None if exp.gpus_per_worker else max(1, int(exp.cpus_per_worker)))
    except evaluate.EvalError as e:
        print(f"final evaluation failed: {e}", file=sys.stderr)
        return
    print(summary["report"], flush=True)
    for tid, why in summary["failed"].items():
        print(f"final evaluation of trial {tid} failed: {why}", file=sys.stderr)


def ray_runner(exp: ExperimentConfig, heartbeat_s: float = 60.0):
    """A runner for ``evaluate.evaluate_experiment``: every trial job a Ray task holding one
    training worker's resources; outcomes yielded as they finish, with a progress line each
    (and a heartbeat while none finishes)."""
    from raysearch import evaluate

    def run(jobs):
        task = ray.remote(evaluate.safe_evaluate_trial).options(
            num_cpus=exp.cpus_per_worker, num_gpus=exp.gpus_per_worker, max_retries=0)
        refs = {task.remote(job): job for job in jobs}
        res = ray.cluster_resources()
        slots = res.get("CPU", 1) // exp.cpus_per_worker if exp.cpus_per_worker else len(jobs)
        if exp.gpus_per_worker:
            slots = min(slots, res.get("GPU", 0) // exp.gpus_per_worker)
        print(f"  {len(jobs)} trial(s), up to {int(max(1, min(slots, len(jobs))))} at a time", flush=True)
        pending, t0, done = list(refs), time.time(), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=heartbeat_s)
            if not ready:
                print(f"  ... {done}/{len(jobs)} evaluated ({time.time() - t0:.0f}s elapsed)", flush=True)
                continue
            job = refs[ready[0]]
            try:
                out = ray.get(ready[0])
            except Exception as e:  # the task's process died (OOM, node lost): report, keep the rest
                out = evaluate.TrialOutcome.failure(job.trial_id, e, time.time() - t0)
            done += 1
            state = (f"worst seen {out.report.accuracy('worst_seen'):.3f}" if out.report is not None
                     else f"FAILED ({out.error})")
            print(f"  [{done}/{len(jobs)}] trial {job.trial_id} evaluated in {out.seconds:.0f}s: {state}", flush=True)
            yield out

    return run


def front_table(rows: list[dict], searched: list[str]) -> tuple[list[dict], float]:
    done = [r for r in rows if r["status"] == store.COMPLETED]
    pts = [[r["clean_acc"], r["robust_acc"]] for r in done]
    if not pts:
        return [], 0.0
    mask = pareto_mask(pts)
    front = sorted([r for r, m in zip(done, mask) if m], key=lambda r: -r["robust_acc"])
    return front, hypervolume_2d(pts)


def report(exp_dir: Path) -> None:
    rows = store.read_rows(exp_dir / store.TRIALS)
    meta = json.loads((exp_dir / store.EXPERIMENT).read_text())
    searched = list(meta.get("search_space", {}))
    failed = [r for r in rows if r["status"] == store.FAILED]
    front, hv = front_table(rows, searched)
    eps = meta["config"]["eps_eval"]
    print(f"\nPareto front: clean accuracy vs robust accuracy under L∞ PGD-{meta['config']['eval_steps']} at "
          f"ε={eps:.4g} (validation split, per-epoch proxy), {len(front)} of "
          f"{sum(r['status'] == store.COMPLETED for r in rows)} completed trials")
    if not front:
        print("  no completed trial")
    else:
        cols = ["trial_id", "clean_acc", "robust_acc", *searched]
        cells = [[r["trial_id"], f"{r['clean_acc']:.3f}", f"{r['robust_acc']:.3f}",
                  *[_fmt(r.get(store.HP_PREFIX + k)) for k in searched]] for r in front]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for row in cells:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"hypervolume (reference point clean=0, robust=0): {hv:.4f}")
    for r in failed:
        print(f"  failed trial {r['trial_id']}: {r['error']}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
