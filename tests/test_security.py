"""What a search loads and exposes: checkpoints and cached components refuse pickled code, a
local Ray started by the CLI listens on loopback only, the dashboard reads only below its
results root."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from raysearch import components, data, perf, trial_io
from raysearch.config import default_config
from tests.conftest import ROOT
from trainables.base import Component


class _Payload:
    """Unpickling this creates a folder: a stand-in for arbitrary code in a crafted file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _armed(path, state: dict, marker) -> None:
    """A real state dict with the payload beside it, saved the way torch saves checkpoints;
    checks that an unrestricted load would run it."""
    torch.save({**state, "extra": _Payload(str(marker))}, path)
    torch.load(path, weights_only=False)
    assert marker.is_dir(), "the payload should run under a plain pickle load"
    marker.rmdir()


def test_a_checkpoint_carrying_pickled_code_is_refused(tmp_path):
    net = nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cfg = default_config("standard", data.SPECS["digits"])
    trial_io.save(tmp_path, nets={"classifier": net}, opts={"classifier": opt}, scheds={}, epoch=0,
                  method="standard", dataset="digits", cfg=cfg)
    assert trial_io.load_state(tmp_path)["epoch"] == 0  # the genuine checkpoint loads

    marker = tmp_path / "pwned"
    _armed(tmp_path / trial_io.STATE, torch.load(tmp_path / trial_io.STATE, weights_only=True), marker)
    with pytest.raises(pickle.UnpicklingError):
        trial_io.load_state(tmp_path)
    assert not marker.exists()


def test_a_cached_component_carrying_pickled_code_is_refused(tmp_path):
    spec = data.SPECS["digits"]
    cfg = default_config("standard", spec)

    def fit(nets, cfg, spec, batches, device):
        with torch.no_grad():
            nets["purifier"].weight.fill_(0.5)

    comp = Component(name="purifier", nets_filled=("purifier",), key={"width": 4}, fit=fit)
    nets = {"purifier": nn.Linear(4, 4)}
    assert components.ensure("m", [comp], nets, cfg, spec, tmp_path, None, torch.device("cpu")) == {
        "purifier": "trained"}
    fresh = {"purifier": nn.Linear(4, 4)}
    assert components.ensure("m", [comp], fresh, cfg, spec, tmp_path, None, torch.device("cpu")) == {
        "purifier": "loaded"}
    assert torch.equal(fresh["purifier"].weight, torch.full((4, 4), 0.5))

    weights = components.component_dir(tmp_path, components.component_key("m", comp, spec, cfg.arch)) / "weights.pt"
    marker = tmp_path / "pwned"
    _armed(weights, torch.load(weights, weights_only=True), marker)
    with pytest.raises(pickle.UnpicklingError):
        components.ensure("m", [comp], {"purifier": nn.Linear(4, 4)}, cfg, spec, tmp_path, None,
                          torch.device("cpu"))
    assert not marker.exists()


LISTENERS = """
import json, os, ray, psutil  # psutil: the copy bundled with Ray
from raysearch.config import ExperimentConfig
from raysearch.search import cluster

cluster.connect(ExperimentConfig(method="standard"))
# a worker listens too; it also shows the environment the search gives every Ray worker
where, env = ray.get(ray.remote(lambda: (ray.util.get_node_ip_address(),
                                         {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")})).remote())
me = psutil.Process()
listening = []
for p in [me, *me.children(recursive=True)]:
    try:
        listening += [[p.name(), c.laddr.ip, c.laddr.port] for c in p.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        pass
print("RESULT" + json.dumps({"worker_ip": where, "worker_malloc": env, "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
                             "listening": listening}))
ray.shutdown()
"""


@pytest.fixture(scope="module")
def local_ray_facts():
    """What a local Ray started as the CLI starts it shows: its listeners, a worker's IP and malloc
    environment (one Ray start for the tests below)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") and not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", LISTENERS], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


@pytest.mark.slow
def test_a_local_ray_started_by_the_cli_listens_on_loopback_only(local_ray_facts):
    got = local_ray_facts
    assert got["nodes"] == ["127.0.0.1"] and got["worker_ip"] == "127.0.0.1"
    names = {name for name, _, _ in got["listening"]}
    assert {"gcs_server", "raylet"} <= names  # the listeners of Ray's own servers were seen
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    exposed = [entry for entry in got["listening"] if entry[1] not in loopback]
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.slow
def test_ray_workers_get_the_allocator_settings(local_ray_facts):
    assert local_ray_facts["worker_malloc"] == perf.ALLOCATOR_ENV


def test_a_users_own_malloc_tuning_wins():
    assert perf.allocator_env({"PATH": "/bin"}) == perf.ALLOCATOR_ENV
    assert perf.allocator_env({"MALLOC_ARENA_MAX": "2"}) == {}
    assert perf.allocator_env({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == {}
