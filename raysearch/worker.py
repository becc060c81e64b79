"""The one generic training loop every defense runs in, as a Ray Train worker function.

Per trial: build the defense's networks, fill pre-trained components from the cache, wrap the
trained networks in DDP (``prepare_model``), shard the training split
(``prepare_data_loader``), and each epoch train and report metrics with a checkpoint. Every
``eval_every`` epochs and after the last one the per-epoch proxy runs (``raysearch.evaluate.proxy``:
clean and worst-case L∞ PGD at ε_eval on a fixed validation subset, sharded across ranks); the
epochs in between report the last measured values with the epoch they were measured at
(``proxy_epoch``; 0 and NaN accuracies before the first measurement), so that checkpoints and
schedulers still see every epoch. A restarted worker group resumes from the last checkpoint, so no
epoch is trained or counted twice. Ray is imported only here, in ``raysearch.search`` and in
``raysearch.ddp``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from raysearch import components, data as data_mod, perf, trial_io
from raysearch.config import ExperimentConfig, trial_config
from raysearch.evaluate import proxy
from raysearch.search.schedulers.clone_state import restore_clone
from trainables import REGISTRY
from trainables.base import StepContext
from trainables.common import frozen


def _world() -> tuple[int, int]:
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def sum_over_workers(values: list[float], device) -> list[float]:
    """Each value summed over every worker of the trial (as given with a single worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _gathered(value: str) -> str:
    """The distinct values of every rank, sorted and comma-separated (node IPs, node ids)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return ",".join(sorted(set(values)))
    return value


def train_loop(loop_cfg: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``loop_cfg`` comes from the Tune trial
    (``raysearch.search.trial.loop_config``): the ExperimentConfig and the sampled hyperparameters."""
    loop_started_at = time.time()
    exp: ExperimentConfig = loop_cfg["experiment"]
    method = exp.method
    defense = REGISTRY[method]
    popts = perf.PerfOptions.from_mapping(dataclasses.asdict(exp))
    rank, world = _world()
    device = ray.train.torch.get_device()
    data = data_mod.load(exp.dataset, exp.data_dir, download=False, eps_eval=exp.eps_eval)
    spec = data.spec
    cfg = trial_config(method, spec, loop_cfg["sampled"], dict(exp.sets), exp.max_epochs, exp.arch)
    torch.manual_seed(cfg.seed * 1000 + rank)

    nets = defense.build(cfg, spec)
    for m in nets.values():
        m.to(device)
    train_x, train_y = data.train.x, data.train.y

    batches = functools.partial(data_mod.shuffled_batches, data.train, device=device,
                                augment=data.augment, flip=data.flip)

    comps = defense.pretrained(cfg, spec)
    if comps:
        # rank 0 trains or loads under the cache lock; the others wait, then load the cached copy
        if rank == 0:
            components.ensure(method, comps, nets, cfg, spec, Path(exp.storage_path), batches, device,
                              held_out=data_mod.eval_subset(data.val, 1000, seed=0)[0])
        if world > 1:
            dist.barrier()
        if rank != 0:
            components.ensure(method, comps, nets, cfg, spec, Path(exp.storage_path), batches, device)

    roles = defense.trainable(cfg)
    raw = dict(nets)
    wrapped = dict(nets)
    for role, m in nets.items():
        if role in roles:
            perf.prepare_module(m, popts)
            m.train()
            if world > 1:
                wrapped[role] = ray.train.torch.prepare_model(m, move_to_device=False)
        else:
            frozen(m)

    loader = perf.make_loader(train_x, train_y, cfg.batch_size, device, popts, rank, world, seed=cfg.seed)
    steps_per_epoch = max(len(loader), 1)
    opts, scheds = defense.optimizers({r: raw[r] for r in roles}, cfg, cfg.epochs * steps_per_epoch)

    start_epoch = 0
    # every epoch's proxy evaluation, kept in the checkpoint: a result in flight when the driver
    # died is recovered from it (the driver re-reports the history when the run ends)
    history: list[dict[str, Any]] = []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            meta = trial_io.load_meta(d)
            if meta.get("diverged"):
                return  # a diverged trial stays failed; its last report already says why
            history = list(meta.get("history", []))
            start_epoch = trial_io.restore(trial_io.load_state(d, device), raw, opts, scheds) + 1
    elif loop_cfg.get("seed_checkpoint"):
        # a MO-PBT clone's new run: the parent's weights and training state, the clone's own
        # hyperparameters; its history starts here (the epochs before are the parent's)
        seed = loop_cfg["seed_checkpoint"]
        start_epoch = restore_clone(trial_io.load_state(seed, device), raw, opts, scheds) + 1

    eval_x, eval_y = data_mod.eval_subset(data.val, exp.eval_size, seed=0)
    shard = slice(rank, None, world)
    eval_x, eval_y = eval_x[shard].to(device), eval_y[shard].to(device)
    eps_eval = exp.eps_eval or spec.eps_eval
    # node ids tell apart nodes that share an IP (several raylets on one host)
    nodes, node_ids = _gathered(ray.util.get_node_ip_address()), _gathered(ray.get_runtime_context().get_node_id())
    ctx = StepContext(nets=wrapped, raw=raw, opts=opts, scheds=scheds, cfg=cfg, spec=spec, epoch=start_epoch,
                      step=start_epoch * steps_per_epoch, steps_per_epoch=steps_per_epoch, device=device,
                      autocast=perf.autocast(device, popts))
    # start-up marks (unix s): worker process start, loop entry, first training step
    marks = {"worker_started_at": _process_started_at(), "loop_started_at": loop_started_at,
             "train_started_at": time.time()}
    settings = proxy_settings(defense.predictor(raw, cfg), exp, spec.classes)
    measure = functools.partial(measure_proxy, defense, raw, cfg, exp, eval_x, eval_y, eps_eval, device,
                                spec.classes, settings)

    for epoch in range(start_epoch, cfg.epochs):
        ctx.epoch = epoch
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        t0 = time.time()
        sums: dict[str, float] = {}
        bad = ""
        for xb, yb in loader:
            x = xb.to(device, non_blocking=True).float().div_(data.train.scale)
            if data.augment:
                x = data_mod.augment_batch(x, data.flip)
            terms = defense.train_step(ctx, perf.prepare_input(x, popts), yb.to(device, non_blocking=True))
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
                if not math.isfinite(v) and not bad:
                    bad = f"loss term {k!r} is {v} at epoch {epoch + 1}, step {ctx.step + 1}"
            ctx.step += 1
        train_s = time.time() - t0
        # the decision to stop is collective: every rank must call report the same number of times
        diverged = sum_over_workers([1.0 if bad else 0.0], device)[0] > 0

        measured = epoch_proxy(epoch + 1, cfg.epochs, exp.eval_every, history, measure, skip=diverged)
        metrics = {
            "epoch": epoch + 1,
            **settings,
            **measured,
            "train_s": train_s,
            "nodes": nodes,
            "node_ids": node_ids,
            "resumed_from": start_epoch,  # epochs restored from a checkpoint by this worker group (0: none)
            "diverged": (bad or "another worker's loss was not finite") if diverged else "",
            **{f"loss_{k}": v / steps_per_epoch for k, v in sums.items()},
        }
        if diverged:
            metrics["clean_acc"] = metrics["robust_acc"] = math.nan
        if epoch == start_epoch:
            metrics.update(marks)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            # a diverged epoch is checkpointed too, marked, so that the run's result (which Ray
            # Train takes from the last checkpoint) carries the reason, and a rerun stops at once
            if rank == 0:
                trial_io.save(tmp, nets=raw, opts=opts, scheds=scheds, epoch=epoch, method=method,
                              dataset=spec.name, cfg=cfg,
                              extra={"history": history, **({"diverged": metrics["diverged"]} if diverged else {})})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if diverged:
            return


def measure_proxy(defense, raw, cfg, exp: ExperimentConfig, eval_x: torch.Tensor, eval_y: torch.Tensor,
                  eps_eval: float, device, classes: int, settings: dict[str, int]) -> dict[str, Any]:
    """The proxy on this worker's shard of the validation subset, summed over the trial's workers:
    the accuracies, the images they count, the attack's settings and the seconds it took."""
    t0 = time.time()
    pred = defense.predictor(raw, cfg)
    with _eval_mode(raw):
        correct, robust, n = proxy.proxy_eval(pred, eval_x, eval_y, eps_eval, exp.eval_steps, exp.eval_eot,
                                              eval_memory=exp.eval_memory, classes=classes)
    correct, robust, n = sum_over_workers([correct, robust, n], device)
    return {"clean_acc": correct / max(n, 1), "robust_acc": robust / max(n, 1), "eval_n": int(n),
            **settings, "eval_s": time.time() - t0}


def proxy_settings(pred, exp: ExperimentConfig, classes: int) -> dict[str, int]:
    """How the proxy attacks ``pred``, reported with every epoch (the same for the whole trial)."""
    return {"eval_eot": pred.draws(exp.eval_eot),  # random draws per gradient
            "eval_calls": pred.calls(exp.eval_eot),  # calls each validation image is scored on
            "eval_iterations": exp.eval_steps,  # gradient steps per run
            "eval_restarts": proxy.runs_per_image(pred, classes)}  # runs per image over the attacks


NOT_MEASURED = {"proxy_epoch": 0, "clean_acc": math.nan, "robust_acc": math.nan, "eval_n": 0, "eval_s": 0.0}


def epoch_proxy(epoch: int, epochs: int, every: int, history: list[dict[str, Any]],
                measure: Callable[[], dict[str, Any]], skip: bool = False) -> dict[str, Any]:
    """The proxy values epoch ``epoch`` (from 1) of ``epochs`` reports. When the proxy is due
    (``proxy.proxy_due``) and not ``skip`` (a diverged epoch, whose accuracies are NaN anyway)
    it is measured now and appended to ``history`` (kept in the checkpoint, so a resumed worker
    group goes on reporting it); otherwise the last measurement is reported again, unchanged
    (its seconds included), with the epoch it was measured at (``proxy_epoch``; 0 and NaN
    accuracies before the first)."""
    if proxy.proxy_due(epoch, epochs, every) and not skip:
        values = {"proxy_epoch": epoch, **measure()}
        history.append({"epoch": epoch, **values})
        return values
    last = history[-1] if history else {"epoch": 0, **NOT_MEASURED}
    values = {k: v for k, v in last.items() if k != "epoch"}
    values.setdefault("proxy_epoch", last["epoch"])  # a checkpoint written before proxy_epoch existed
    return values


def _process_started_at() -> float:
    """Unix time this worker process started (the start-up cost before the loop is entered)."""
    import psutil

    return psutil.Process().create_time()


@contextlib.contextmanager
def _eval_mode(nets):
    modes = {k: m.training for k, m in nets.items()}
    try:
        for m in nets.values():
            m.eval()
        yield
    finally:
        for k, m in nets.items():
            m.train(modes[k])

