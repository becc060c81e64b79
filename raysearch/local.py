"""A defense ready to step in this process, without Ray: networks built, pre-trained components
filled from (or trained into) a cache folder, frozen nets frozen, optimizers made. Used by the
benchmarks and the contract tests; the distributed version of the same set-up is in worker.py."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path

import torch

from raysearch import components
from raysearch import data as data_mod
from raysearch.config import default_config
from trainables import REGISTRY
from trainables.base import StepContext, sgd_step
from trainables.common import frozen
from trainables.nets import make_classifier


def local_context(method: str, d: data_mod.Data, cache: Path, total_steps: int = 100,
                  device: torch.device = torch.device("cpu"), **overrides):
    """(defense, StepContext) for one process; ``overrides`` replace config fields."""
    defense = REGISTRY[method]
    cfg = dataclasses.replace(default_config(method, d.spec), **overrides)
    torch.manual_seed(cfg.seed)
    nets = {k: m.to(device) for k, m in defense.build(cfg, d.spec).items()}
    batches = functools.partial(data_mod.shuffled_batches, d.train, device=device,
                                augment=d.augment, flip=d.flip)
    components.ensure(method, defense.pretrained(cfg, d.spec), nets, cfg, d.spec, Path(cache), batches, device,
                      held_out=d.val.images())
    return defense, step_context(defense, cfg, d.spec, nets, total_steps, device)


def step_context(defense, cfg, spec, nets, total_steps: int = 100,
                 device: torch.device = torch.device("cpu"), steps_per_epoch: int | None = None,
                 step: int = 0) -> StepContext:
    """A StepContext over ``nets`` as the worker makes it (without DDP): the networks the
    defense trains in train mode with fresh optimizers, the others frozen. ``steps_per_epoch``
    defaults to ``total_steps`` spread over ``cfg.epochs``."""
    roles = defense.trainable(cfg)
    for role, m in nets.items():
        m.train() if role in roles else frozen(m)
    opts, scheds = defense.optimizers({r: nets[r] for r in roles}, cfg, total_steps)
    if steps_per_epoch is None:
        steps_per_epoch = max(total_steps // max(cfg.epochs, 1), 1)
    return StepContext(nets=nets, raw=nets, opts=opts, scheds=scheds, cfg=cfg, spec=spec, epoch=0, step=step,
                       steps_per_epoch=steps_per_epoch, device=device, autocast=contextlib.nullcontext)


def standard_classifier(d: data_mod.Data, epochs: int, batch_size: int = 128,
                        device: torch.device = torch.device("cpu"), seed: int = 0) -> torch.nn.Module:
    """The data set's default classifier after ``epochs`` of plain SGD on the training split,
    frozen in eval mode: an undefended model for attack tests and benchmarks."""
    torch.manual_seed(seed)
    model = make_classifier("auto", d.spec).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(epochs):
        for x, y in data_mod.shuffled_batches(d.train, batch_size, device):
            sgd_step(opt, torch.nn.functional.cross_entropy(model(x), y))
    return frozen(model)
