"""Trials of two DDP workers (gloo on CPU). The process-group backend (raysearch.ddp): the Train
controller can load it without torch, and it picks Ray's backends. Every defense's training step
under DDP, in two processes without Ray: it runs on the PyTorch versions whose buffer sync broke
a second wrapped forward before a backward, and it keeps the workers' parameters identical
(gradients averaged; rvs's against the mean of the workers' own). Every defense's two-worker
trial end to end on one Ray cluster: the results of a one-worker trial (trials.parquet row,
evaluation shards adding up to the whole subset, a checkpoint that rebuilds the predictor)."""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from raysearch import store, trial_io
from raysearch.ddp import process_group_backend
from raysearch.schema import Status
from tests.conftest import ROOT, python_c
from trainables import REGISTRY


def test_the_controller_side_loads_without_torch():
    # what the Train controller deserializes: the config and its backend class; importing torch
    # there cost every trial ≈ 1.8 s of start-up before its workers were launched
    code = ("import pickle, sys; import ray.train.v2.api.data_parallel_trainer; "
            "from raysearch.ddp import LeanTorchConfig; "
            "cfg = pickle.loads(pickle.dumps(LeanTorchConfig())); "
            "assert cfg.backend_cls.share_cuda_visible_devices; cfg.framework; "
            "print(sorted(m for m in ('torch', 'ray.train.torch') if m in sys.modules))")
    out = python_c(code)
    assert out.strip().splitlines()[-1] == "[]"


def test_backend_follows_the_workers_devices():
    assert process_group_backend({"CPU": 1}) == "gloo"
    assert process_group_backend({"CPU": 1, "GPU": 1}) == "nccl"
    assert process_group_backend({"CPU": 0, "GPU": 0.5}) == "nccl"


# ---------------------------------------------------------------- every defense's step under DDP

PORT_ENV = "RAYSEARCH_TEST_DDP_PORT"


def _ddp_steps(rank: int, port: int, cache: str, out: dict) -> None:
    """One rank of a two-process gloo group: every defense's training step with its trained
    networks DDP-wrapped as the worker wraps them. DDP's forward-time buffer sync is run the way
    PyTorch 2.6 and the releases after it ran it until the sync kept the buffers' version counters,
    so a step that calls a wrapped network twice before one backward fails here on any PyTorch.
    Records, per method, the loss terms and a checksum of every trained parameter after the step
    (identical on both ranks when the step's gradients were averaged over them), and for rvs the
    DDP gradient beside this rank's own gradient on the same inputs."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from raysearch import data
    from raysearch.local import local_context
    from tests.conftest import fresh_context
    from tests.test_defenses import cheap_overrides

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.autograd._unsafe_preserve_version_counter = lambda tensors: contextlib.nullcontext()
    digits = data.load("digits")
    idx = torch.arange(rank * 32, rank * 32 + 32)  # each rank its own batch
    x, y = digits.train.images(idx), digits.train.y[idx]
    result = {}
    try:
        # first, in a fresh process: rvs's gradient through DDP against this rank's plain gradient
        defense = REGISTRY["rvs"]
        ctx = fresh_context(defense, digits.spec, seed=0)
        f = ctx.raw["classifier"]
        x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
        plain = torch.autograd.grad(defense.classifier_loss(ctx, x, x_adv, y)[0], list(f.parameters()))
        ctx.nets = {**ctx.raw, "classifier": DistributedDataParallel(f)}
        f.zero_grad()
        defense.classifier_loss(ctx, x, x_adv, y)[0].backward()
        result["rvs_grads"] = {"plain": [g.clone() for g in plain], "ddp": [p.grad.clone() for p in f.parameters()]}
        for method in sorted(REGISTRY):
            # rank 0 fills the component cache, then rank 1 reads it (as the worker does)
            for turn in range(2):
                if turn == rank:
                    defense, ctx = local_context(method, digits, Path(cache), batch_size=32, **cheap_overrides(method))
                dist.barrier()
            roles = defense.trainable(ctx.cfg)
            ctx.nets = {r: DistributedDataParallel(m) if r in roles else m for r, m in ctx.raw.items()}
            torch.manual_seed(rank)
            try:
                terms = defense.train_step(ctx, x, y)
            except RuntimeError as e:
                result[method] = {"error": str(e).splitlines()[0]}
                continue
            sums = [float(sum(p.detach().double().sum() for p in ctx.raw[r].parameters())) for r in roles]
            result[method] = {"terms": terms, "param_sums": sums}
    finally:
        dist.destroy_process_group()
    out[rank] = result


@pytest.fixture(scope="module")
def ddp_steps(tmp_path_factory):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        procs = [ctx.Process(target=_ddp_steps, args=(rank, port, str(tmp_path_factory.mktemp("cache")), out)) for rank in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=300)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        return dict(out)


@pytest.mark.slow  # two processes that import torch and train every defense a step (~30 s idle)
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_defense_steps_under_two_ddp_workers_and_keeps_them_in_step(ddp_steps, method):
    first, second = ddp_steps[0][method], ddp_steps[1][method]
    assert "error" not in first and "error" not in second, (first, second)
    assert all(math.isfinite(v) for v in first["terms"].values()), first["terms"]
    # the same parameters on both ranks after the step: every gradient was averaged over them
    assert first["param_sums"] == pytest.approx(second["param_sums"], rel=1e-9, abs=1e-9)


@pytest.mark.slow
def test_rvs_gradient_through_ddp_is_the_mean_of_the_workers_gradients(ddp_steps):
    """The natural pass runs outside the DDP wrapper; its share of the gradient is averaged all the same."""
    plain0, ddp0 = ddp_steps[0]["rvs_grads"]["plain"], ddp_steps[0]["rvs_grads"]["ddp"]
    plain1, ddp1 = ddp_steps[1]["rvs_grads"]["plain"], ddp_steps[1]["rvs_grads"]["ddp"]
    for p0, p1, d0, d1 in zip(plain0, plain1, ddp0, ddp1, strict=True):
        assert torch.allclose(d0, (p0 + p1) / 2, atol=1e-6) and torch.equal(d0, d1)
    assert any(not torch.allclose(p0, p1) for p0, p1 in zip(plain0, plain1))  # the ranks' own gradients differed


# ---------------------------------------------------------------- every defense's two-worker trial, end to end

EVAL_SIZE = 40


# side by side: two searches at a time fill the two cores; seven at once took ≈ 1.6× the CPU time
# (every Ray process polls for longer while it waits its turn)
AT_ONCE = 2
# costliest first, so the last one to start is a short one
ORDER = ("ijsat", "rvs", "atop", "atld", "trades", "pgd_at", "standard")


@pytest.fixture(scope="module")
def two_worker_searches(tmp_path_factory):
    """One search of one two-worker trial per defense, every search a `raysearch.tune` process
    against one Ray cluster started once, ``AT_ONCE`` searches at a time. Returns
    {method: (output, exit code, experiment folder)}."""
    from tests.test_defenses import cheap_overrides
    from tests.test_search_cluster import TOKEN_AUTH, RayNode

    assert sorted(ORDER) == sorted(REGISTRY)
    root = tmp_path_factory.mktemp("ddp-all")
    node = RayNode(num_cpus=2 * AT_ONCE, env=TOKEN_AUTH)
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONUNBUFFERED": "1", **TOKEN_AUTH}

    def start(method: str) -> subprocess.Popen:
        sets = [arg for k, v in cheap_overrides(method).items() for arg in ("--set", f"{k}={v!r}")]
        with open(root / f"{method}.out", "w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "raysearch.tune", "--address", node.address, "--method", method,
                 "--workers-per-trial", "2", "--num-samples", "1", "--max-epochs", "1", "--eval-size",
                 str(EVAL_SIZE), "--eval-steps", "2", "--eval-eot", "2", "--no-final-eval", *sets,
                 "--storage-path", str(root), "--name", method],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)

    waiting, running, codes = list(ORDER), {}, {}
    try:
        deadline = time.monotonic() + 1200
        while (waiting or running) and time.monotonic() < deadline:
            while waiting and len(running) < AT_ONCE:
                method = waiting.pop(0)
                running[method] = start(method)
            for method, proc in list(running.items()):
                if proc.poll() is not None:
                    codes[method] = proc.returncode
                    del running[method]
            time.sleep(0.5)
    finally:
        for proc in running.values():
            proc.kill()
        node.remove()
    outputs = {m: (root / f"{m}.out").read_text() if (root / f"{m}.out").exists() else "" for m in ORDER}
    return {m: (outputs[m], codes.get(m, "not finished in 20 minutes"), root / m) for m in ORDER}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_defense_trains_a_two_worker_trial_with_the_one_worker_results(two_worker_searches, method, digits):
    out, rc, exp_dir = two_worker_searches[method]
    assert rc == 0, out[-3000:]
    (row,) = store.read_rows(exp_dir / store.TRIALS)
    assert row["status"] == Status.COMPLETED and row["error"] is None, row["error"]
    assert row["num_workers"] == 2 and row["epochs"] == 1
    assert row["device_s"] == pytest.approx(2 * row["wall_s"])
    assert row["eval_n"] == EVAL_SIZE  # the two ranks' shards add up to the whole subset
    assert all(math.isfinite(row[k]) for k in ("clean_acc", "robust_acc", "wall_s"))
    evals = [r for r in store.read_rows(exp_dir / store.EVALS) if r["trial_id"] == row["trial_id"]]
    assert {r["attack"] for r in evals} >= {"clean"} and len(evals) >= 2
    assert all(r["epoch"] == 1 and r["n"] == EVAL_SIZE and math.isfinite(r["accuracy"]) for r in evals)
    # the checkpoint (rank 0's) rebuilds the deployed predictor
    folder = trial_io.checkpoint_folder(exp_dir, row["checkpoint"])
    assert folder is not None, row["checkpoint"]
    defense, cfg, nets, pred = trial_io.rebuild(folder, digits.spec)
    assert defense.name == method and trial_io.load_meta(folder)["epoch"] == 0
    x = digits.test.images(torch.arange(8))
    assert pred.model(x).shape == (8, digits.spec.classes)
