"""A defense ready to step in this process, without Ray: networks built, pre-trained components
filled from (or trained into) a cache folder, frozen nets frozen, optimizers made. Used by the
benchmarks and the contract tests; the distributed version of the same set-up is in worker.py."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from raysearch import components
from raysearch import data as data_mod
from raysearch.config import default_config
from trainables import REGISTRY
from trainables.base import StepContext
from trainables.common import frozen


def local_context(method: str, d: data_mod.Data, cache: Path, total_steps: int = 100,
                  device: torch.device = torch.device("cpu"), **overrides):
    """(defense, StepContext) for one process; ``overrides`` replace config fields."""
    defense = REGISTRY[method]
    cfg = dataclasses.replace(default_config(method, d.spec), **overrides)
    torch.manual_seed(cfg.seed)
    nets = {k: m.to(device) for k, m in defense.build(cfg, d.spec).items()}

    def batches(bs):
        perm = torch.randperm(len(d.train))
        for i in range(0, len(perm), bs):
            x = d.train.images(perm[i:i + bs]).to(device)
            yield (data_mod.augment_batch(x, d.flip) if d.augment else x), d.train.y[perm[i:i + bs]].to(device)

    components.ensure(method, defense.pretrained(cfg, d.spec), nets, cfg, d.spec, Path(cache), batches, device)
    roles = defense.trainable(cfg)
    for role, m in nets.items():
        m.train() if role in roles else frozen(m)
    opts, scheds = defense.optimizers({r: nets[r] for r in roles}, cfg, total_steps)
    ctx = StepContext(nets=nets, raw=nets, opts=opts, scheds=scheds, cfg=cfg, spec=d.spec, epoch=0, step=0,
                      steps_per_epoch=max(total_steps // max(cfg.epochs, 1), 1), device=device,
                      autocast=contextlib.nullcontext)
    return defense, ctx
