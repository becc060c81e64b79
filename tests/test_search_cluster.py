"""Connecting to Ray and sizing a search to it (raysearch.search.cluster): how many trials fit
at once, and a search on a real multi-node Ray cluster started the way users start one (``ray
start --head`` and ``ray start --address``), each node its own raylet with its own CPUs, temp dir
and ports; and the loss of a node in the middle of a search.

Both nodes run on this host, so they share an IP: trials.parquet's ``node_ids`` column (Ray
node ids) tells them apart where ``nodes`` (IPs) cannot.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest
import ray  # noqa: F401  (puts the psutil bundled with Ray on the path)
import psutil
import yaml

from raysearch import store
from raysearch.config import ExperimentConfig
from raysearch.schema import Status
from raysearch.search.cluster import LaunchError, _free_port, concurrency
from tests.conftest import ROOT, run_cli

RAY = str(Path(sys.executable).with_name("ray"))
# the proxy after every epoch: these tests count every epoch's rows across kills and resumes
SMALL = ("--eval-size", "60", "--no-final-eval", "--eval-steps", "5", "--eval-every", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: psutil.Process | int) -> None:
    """SIGKILL a process and every descendant (collected first: orphans lose their parent link)."""
    try:
        root = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def wait_for(what: str, check: Callable[[], object], timeout: float, proc: subprocess.Popen | None = None,
             every: float = 0.2):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds or when
    ``proc`` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def rows(exp_dir: Path, name: str = store.TRIALS) -> list[dict]:
    try:
        return store.read_rows(exp_dir / name)
    except OSError:
        return []


class RayNode:
    """One ``ray start --block`` process: a raylet (and GCS and dashboard for the head) with its
    own CPUs, temp dir and ports. Killing its process tree is losing the node."""

    def __init__(self, num_cpus: int, head_address: str | None = None, env: dict | None = None):
        # Ray puts Unix sockets under the temp dir: keep its path short (108-byte limit)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsn", dir="/tmp"))
        args = [RAY, "start", "--block", "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--temp-dir", str(self.temp_dir), "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--min-worker-port", "0", "--max-worker-port", "0",
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
        if head_address is None:
            args += ["--head", "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port())]
        else:
            args += ["--address", head_address]
        self.log = self.temp_dir / "ray_start.log"
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(args, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     env={**full_env, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     start_new_session=True)
        try:
            wait_for("the Ray node to start", lambda: "Ray runtime started" in self.log.read_text(), 180,
                     proc=self.proc)
        except BaseException:
            print(self.log.read_text()[-3000:])
            self.remove()
            raise
        self.node_id = wait_for("the node's raylet", self._raylet_node_id, 60)

    def _raylet_node_id(self) -> str | None:
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                for arg in p.cmdline():
                    if arg.startswith("--node_id="):
                        return arg.split("=", 1)[1]
            except psutil.NoSuchProcess:
                continue
        return None

    @property
    def address(self) -> str:
        """The GCS address written by ``ray start`` (the IP Ray picked for this host)."""
        return (self.temp_dir / "ray_current_cluster").read_text().strip()

    def processes(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        kill_tree(self.proc.pid)
        self.proc.wait(timeout=30)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# Ray 2.60 token authentication, as a cluster should run it: every node and the search's driver
# present the cluster's token (here one made for the test, not ~/.ray/auth_token, which
# `ray start --head` would otherwise pick up when it exists while worker nodes would not)
TOKEN_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
# The GCS declares a silent node dead after period × threshold (defaults 3 s × 5)
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                   "RAY_health_check_timeout_ms": "2000"}


@pytest.fixture(scope="module")
def head():
    node = RayNode(num_cpus=1, env={**TOKEN_AUTH, **FAST_NODE_DEATH})
    yield node
    node.remove()


@pytest.fixture
def worker(head):
    node = RayNode(num_cpus=1, head_address=head.address, env=TOKEN_AUTH)
    yield node
    node.remove()


@pytest.mark.slow
def test_a_search_spreads_its_trials_over_both_nodes(head, worker, tmp_path):
    # one CPU per node and one 1-CPU worker per trial: the two concurrent trials must land on
    # different nodes
    proc = run_cli("--address", head.address, "--method", "standard", "--num-samples", "2", "--max-epochs", "2",
                   *SMALL, "--storage-path", str(tmp_path), "--name", "two-nodes", timeout=600, env=TOKEN_AUTH)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 at a time" in proc.stdout  # concurrency derived from the cluster's 2 CPUs

    exp_dir = tmp_path / "two-nodes"
    trials = rows(exp_dir)
    assert len(trials) == 2 and {r["status"] for r in trials} == {Status.COMPLETED}
    assert {r["node_ids"] for r in trials} == {head.node_id, worker.node_id}
    # every trial's results and Train checkpoints are in the one storage path
    evals = rows(exp_dir, store.EVALS)
    assert sorted((r["trial_id"], r["epoch"]) for r in evals if r["attack"] == "clean") == sorted(
        (r["trial_id"], e) for r in trials for e in (1, 2))
    for r in trials:  # stored relative to the experiment folder, so the folder can move
        assert Path(r["checkpoint"]).parts[:2] == ("train", r["trial_id"]), r["checkpoint"]
        assert (exp_dir / r["checkpoint"] / "state.pt").exists()


@pytest.mark.slow
def test_losing_a_node_mid_search_retries_its_trial_on_the_other(head, worker, tmp_path):
    exp_dir = tmp_path / "node-loss"
    # pgd_at with small batches makes epochs last seconds, so the node can be killed mid-trial
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysearch.tune", "--address", head.address, "--method", "pgd_at",
         "--num-samples", "2", "--max-epochs", "4", "--set", "batch_size=16", "--set", "attack_steps=5", *SMALL,
         "--storage-path", str(tmp_path), "--name", "node-loss"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **TOKEN_AUTH})
    try:
        def on_worker():
            return [r for r in rows(exp_dir) if r.get("node_ids") == worker.node_id and r["status"] == Status.RUNNING
                    and (r["epochs"] or 0) >= 1]

        victim = wait_for("a trial on the worker node to checkpoint an epoch", on_worker, 400, proc=proc)[0]
        worker.kill()  # the node is gone: raylet, its Train worker and anything else it hosted
        out, _ = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert proc.returncode == 0, out[-4000:]

    trials = {r["trial_id"]: r for r in rows(exp_dir)}
    assert len(trials) == 2 and {r["status"] for r in trials.values()} == {Status.COMPLETED}, out[-3000:]
    moved = trials[victim["trial_id"]]
    assert moved["epochs"] == 4 and moved["node_ids"] == head.node_id
    assert moved["resumed_from"] >= 1  # picked up from its checkpoint, not from scratch
    evals = rows(exp_dir, store.EVALS)
    keys = [(r["trial_id"], r["epoch"], r["attack"]) for r in evals]
    assert len(keys) == len(set(keys)) == 2 * 4 * 2  # trials × epochs × (clean, pgd): none twice, none lost


def test_the_example_cluster_config_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "raysearch" / "cluster.yaml").read_text())
    full = prepare_config(config)  # what `ray up` does before validating
    validate_config(full)
    assert full["provider"]["type"] == "local" and len(full["provider"]["worker_ips"]) == 1
    starts = " ".join(full["head_start_ray_commands"] + full["worker_start_ray_commands"])
    assert starts.count("--num-gpus=4") == 2 and "--dashboard-host=127.0.0.1" in starts


# ---------------------------------------------------------------- how many trials fit at once

def _exp(**changes) -> ExperimentConfig:
    return ExperimentConfig(method="standard", num_samples=12, **changes)


@pytest.mark.parametrize("changes,resources,fits", [
    ({}, {"CPU": 4.0}, 4),  # one 1-CPU worker per trial
    ({"workers_per_trial": 2}, {"CPU": 5.0}, 2),  # whole trials only
    ({"cpus_per_worker": 0.5}, {"CPU": 3.0}, 6),
    ({"max_concurrent": 3}, {"CPU": 8.0}, 3),  # the user's cap
    ({}, {"CPU": 64.0}, 12),  # never more than the trials to run
    ({"gpus_per_worker": 1.0}, {"CPU": 16.0, "GPU": 2.0}, 2),  # GPUs bind first
    ({"gpus_per_worker": 0.5}, {"CPU": 1.0, "GPU": 4.0}, 1),  # ... unless CPUs are scarcer
    ({"cpus_per_worker": 0.0}, {"CPU": 0.0}, 12),  # a trial that reserves nothing
])
def test_concurrency_is_what_the_cluster_fits(changes, resources, fits):
    assert concurrency(_exp(**changes), resources) == fits


@pytest.mark.parametrize("changes,resources,message", [
    ({"gpus_per_worker": 1.0}, {"CPU": 8.0}, "the Ray cluster has no GPUs (resources: 8 CPU)"),
    ({"workers_per_trial": 2, "gpus_per_worker": 1.0}, {"CPU": 8.0, "GPU": 1.0},
     "a trial needs 2 GPUs (2 workers × 1) but the cluster has 1"),
    ({"workers_per_trial": 3}, {"CPU": 2.0}, "a trial needs 3 CPUs (3 workers × 1) but the cluster has 2"),
])
def test_a_trial_that_can_never_be_placed_fails_at_once(changes, resources, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        concurrency(_exp(**changes), resources)


def test_a_free_port_is_free():
    port = _free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
