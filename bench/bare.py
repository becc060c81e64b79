"""The worker loop's work without Ray, for benchmarks: the same defense code, loader, optimizers
and per-epoch proxy evaluation as ``raysearch.worker``, in this process, one epoch per call.

``BareTrial`` can also save its state as a trial checkpoint and start from a MO-PBT parent's
checkpoint with its own hyperparameters (``raysearch.search.schedulers.clone_state``), as a
clone's new Train run does. ``bare_trial`` is the generator form benchmarks that only train use.
"""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import torch

from raysearch import components, data as data_mod, perf, trial_io
from raysearch.config import trial_config
from raysearch.evaluate.proxy import proxy_eval
from raysearch.search.schedulers.clone_state import restore_clone
from trainables import REGISTRY
from trainables.base import StepContext
from trainables.common import eval_mode, frozen


class BareTrial:
    """One trial of ``method`` with the sampled hyperparameters ``sampled`` (and ``sets``) for
    ``epochs`` epochs; ``run_epoch()`` trains the next epoch and measures the proxy on
    ``eval_size`` validation images. ``nets`` and ``cfg`` are the live networks and config."""

    def __init__(self, method: str, sampled: dict, sets: dict, epochs: int, eval_size: int, eval_steps: int,
                 eval_eot: int = 2, dataset: str = "digits", eps_eval: float = 0.0, storage: str | None = None,
                 opts: perf.PerfOptions = perf.PerfOptions(), device: str = "cpu", data=None):
        self.method, self.device = method, torch.device(device)
        self.defense = defense = REGISTRY[method]
        self.data = data = data or data_mod.load(dataset)
        spec = data.spec
        self.cfg = cfg = trial_config(method, spec, sampled, sets, epochs, "auto")
        torch.manual_seed(cfg.seed * 1000)
        self.nets = nets = defense.build(cfg, spec)
        for m in nets.values():
            m.to(self.device)
        batches = functools.partial(data_mod.shuffled_batches, data.train, device=self.device, augment=data.augment,
                                    flip=data.flip)  # as the worker's, for component pre-training
        comps = defense.pretrained(cfg, spec)
        if comps:
            components.ensure(method, comps, nets, cfg, spec, Path(storage or tempfile.mkdtemp()), batches,
                              self.device)
        self.roles = roles = defense.trainable(cfg)
        for role, m in nets.items():
            if role in roles:
                perf.prepare_module(m, opts).train()
            else:
                frozen(m)
        self.loader = perf.make_loader(data.train.x, data.train.y, cfg.batch_size, self.device, opts, seed=cfg.seed)
        steps = max(len(self.loader), 1)
        self.opts, self.scheds = defense.optimizers({r: nets[r] for r in roles}, cfg, cfg.epochs * steps)
        eval_x, eval_y = data_mod.eval_subset(data.val, eval_size, seed=0)
        self.eval_x, self.eval_y = eval_x.to(self.device), eval_y.to(self.device)
        self.eps_eval = eps_eval or spec.eps_eval
        self.eval_steps, self.eval_eot, self.popts = eval_steps, eval_eot, opts
        self.ctx = StepContext(nets=nets, raw=nets, opts=self.opts, scheds=self.scheds, cfg=cfg, spec=spec, epoch=0,
                               step=0, steps_per_epoch=steps, device=self.device,
                               autocast=perf.autocast(self.device, opts))

    @property
    def finished(self) -> bool:
        return self.ctx.epoch >= self.cfg.epochs

    def start_from_clone(self, folder: Path) -> None:
        """Continue from a parent's checkpoint with this trial's own hyperparameters."""
        self.ctx.epoch = restore_clone(trial_io.load_state(folder, self.device), self.nets, self.opts,
                                       self.scheds) + 1
        self.ctx.step = self.ctx.epoch * self.ctx.steps_per_epoch

    def save(self, folder: Path) -> None:
        """A trial checkpoint of the epochs done so far (the worker's format)."""
        trial_io.save(folder, nets=self.nets, opts=self.opts, scheds=self.scheds, epoch=self.ctx.epoch - 1,
                      method=self.method, dataset=self.data.spec.name, cfg=self.cfg)

    def run_epoch(self) -> dict:
        """Train the next epoch, then the proxy: {epoch, clean_acc, robust_acc, train_s, eval_s}."""
        ctx, data, defense = self.ctx, self.data, self.defense
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(ctx.epoch)
        t0 = time.time()
        for xb, yb in self.loader:
            x = xb.to(self.device).float().div_(data.train.scale)
            if data.augment:
                x = data_mod.augment_batch(x, data.flip)
            defense.train_step(ctx, perf.prepare_input(x, self.popts), yb.to(self.device))
            ctx.step += 1
        t1 = time.time()
        pred = defense.predictor(self.nets, self.cfg)
        with eval_mode(*self.nets.values()):
            clean, robust, n = proxy_eval(pred, self.eval_x, self.eval_y, self.eps_eval, self.eval_steps,
                                          self.eval_eot, classes=self.data.spec.classes)
        for role, m in self.nets.items():
            if role not in self.roles:
                m.eval()
        ctx.epoch += 1
        return {"epoch": ctx.epoch, "clean_acc": clean / n, "robust_acc": robust / n, "train_s": t1 - t0,
                "eval_s": time.time() - t1}


def bare_trial(method: str, sampled: dict, sets: dict, epochs: int, eval_size: int, eval_steps: int,
               eval_eot: int = 2, dataset: str = "digits", eps_eval: float = 0.0, storage: str | None = None,
               opts: perf.PerfOptions = perf.PerfOptions(), device: str = "cpu", keep: dict | None = None):
    """``BareTrial`` as a generator, one epoch's metrics per ``next()``. ``keep``: filled with
    the trial's ``nets`` and ``cfg``, for a caller that evaluates them."""
    trial = BareTrial(method, sampled, sets, epochs, eval_size, eval_steps, eval_eot, dataset, eps_eval, storage,
                      opts, device)
    if keep is not None:
        keep.update(nets=trial.nets, cfg=trial.cfg)
    while not trial.finished:
        yield trial.run_epoch()
