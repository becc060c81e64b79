"""Connecting to Ray (or starting a local one bound to 127.0.0.1), and how many trials the
cluster fits at once.

A Tune trial is only its Train run's driver and reserves nothing; its Train workers reserve the
CPUs/GPUs in their own placement group, so concurrency is derived from the cluster's resources
and trials queue instead of deadlocking (see README, 'Why Ray is configured as it is').
"""
from __future__ import annotations

import math
import os
import socket
from typing import Any

import optuna
import ray
import ray._private.ray_constants as ray_constants

from raysearch import perf
from raysearch.config import ExperimentConfig


class LaunchError(Exception):
    """A problem with the cluster or the experiment folder; one line for the user."""


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
