"""The trial's process-group backend (raysearch.ddp): the Train controller can load it without
torch, and it picks Ray's backends. That DDP itself works across two workers (gradients and
evaluation shards all-reduced) is test_tune.test_two_ddp_workers_train_one_trial."""
from __future__ import annotations

import subprocess
import sys

from raysearch.ddp import process_group_backend
from tests.conftest import ROOT


def test_the_controller_side_loads_without_torch():
    # what the Train controller deserializes: the config and its backend class; importing torch
    # there cost every trial ≈ 1.8 s of start-up before its workers were launched
    code = ("import pickle, sys; import ray.train.v2.api.data_parallel_trainer; "
            "from raysearch.ddp import LeanTorchConfig; "
            "cfg = pickle.loads(pickle.dumps(LeanTorchConfig())); "
            "assert cfg.backend_cls.share_cuda_visible_devices; cfg.framework; "
            "print(sorted(m for m in ('torch', 'ray.train.torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_backend_follows_the_workers_devices():
    assert process_group_backend({"CPU": 1}) == "gloo"
    assert process_group_backend({"CPU": 1, "GPU": 1}) == "nccl"
    assert process_group_backend({"CPU": 0, "GPU": 0.5}) == "nccl"
