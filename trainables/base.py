"""The defense interface every method implements, and the data types it exchanges.

One generic training loop (``raysearch.worker``) trains every defense through this interface:

* ``build(cfg, spec)`` returns every network of the method by role (``"classifier"`` is always
  there; generators, discriminators, flows and purifiers are extra entries).
* ``pretrained(cfg, spec)`` lists the components that are trained once per data set and
  component configuration, cached on the experiment storage and loaded by every trial.
* ``trainable(cfg)`` names the networks the loop optimizes (and wraps in DDP); the rest are
  frozen (``requires_grad=False``, eval mode).
* ``optimizers(nets, cfg, total_steps)`` builds one optimizer (and scheduler) per trained role.
* ``train_step(ctx, x, y)`` does every update for one batch and returns its loss terms.
* ``predictor(nets, cfg)`` is the deployed pipeline that attacks see end to end, and says
  whether it is randomized (attack with EOT) or has a non-differentiable step (attack with BPDA).

Images are in [0, 1]; normalization lives inside the networks. Budgets (``metadata={"eps": True}``
fields) are written at the CIFAR scale (8/255) and multiplied by ``DataSpec.eps_scale`` for
other data sets, so one search space serves every data set. Nothing here imports Ray.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from trainables.nets import make_classifier
from trainables.spec import DataSpec  # re-exported: ``from trainables.base import DataSpec`` works

EPS = {"eps": True}  # field metadata: a pixel-scale budget, scaled per data set


@dataclass(frozen=True)
class BaseConfig:
    """Fields every method shares. Units in comments; budgets on the [0, 1] pixel scale."""

    arch: str = "auto"  # classifier architecture; auto: small CNN for digits, preact18 otherwise
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # examples per worker per step
    lr: float = 0.05  # classifier SGD learning rate at batch_size examples, cosine-decayed
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps_train: float = field(default=8 / 255, metadata=EPS)  # L∞ training radius
    seed: int = 0


@dataclass(frozen=True)
class Component:
    """A network trained once per data set and configuration, then cached and reused.

    ``fit(nets, cfg, spec, loader, device)`` trains ``nets[n]`` for n in ``nets_filled`` in
    place; ``key`` holds every config value that determines the result (the data set and
    architecture are added by the cache). ``check(nets, cfg, spec, held_out, device)``, if
    given, runs after ``fit`` on images the component never trained on: it raises when the
    result must not be cached and returns its measurements, stored with the component.
    """

    name: str
    nets_filled: tuple[str, ...]
    key: Mapping[str, Any]
    fit: Callable[..., None]
    check: Callable[..., dict] | None = None


@dataclass
class Predictor:
    """The deployed inference pipeline: [0, 1] images -> logits.

    ``randomized``: fresh randomness per call, so attacks need EOT and clean accuracy is
    averaged over draws. ``bpda``: the same pipeline with its non-differentiable or
    test-time-optimized steps replaced by the identity in the backward pass (None if there are
    none). ``draws_per_call``: independent random draws one call already averages (atop's
    ``n_masks``); EOT budgets count draws, so an attack asking for ``eot`` draws makes
    ``calls(eot)`` calls.
    """

    model: nn.Module
    randomized: bool = False
    bpda: nn.Module | None = None
    draws_per_call: int = 1

    def calls(self, eot: int) -> int:
        """Calls that give at least ``eot`` random draws (1 for a deterministic predictor)."""
        return -(-max(1, eot) // max(1, self.draws_per_call)) if self.randomized else 1

    def draws(self, eot: int) -> int:
        """Random draws those ``calls(eot)`` make (1 for a deterministic predictor): what an
        EOT budget of ``eot`` is recorded as."""
        return self.calls(eot) * self.draws_per_call if self.randomized else 1


@dataclass
class StepContext:
    """Everything ``train_step`` may touch for one batch.

    ``nets`` are the modules to call for training forward passes (DDP-wrapped when trained on
    several workers); ``raw`` are the same modules unwrapped, for attack crafting (gradients
    with respect to the input need no all-reduce). ``opts``/``scheds`` are keyed by role.
    """

    nets: dict[str, nn.Module]
    raw: dict[str, nn.Module]
    opts: dict[str, torch.optim.Optimizer]
    scheds: dict[str, Any]
    cfg: Any
    spec: DataSpec
    epoch: int
    step: int  # global step, from 0
    steps_per_epoch: int
    device: torch.device
    autocast: Callable[[], Any]  # context manager for mixed precision (a no-op by default)


class Defense:
    """Base class with the defaults most methods want; subclasses override what differs."""

    name: str = ""
    Config: type = BaseConfig
    summary: str = ""
    randomized: bool = False  # its predictor is randomized for every config (sizes the final evaluation)

    def build(self, cfg, spec: DataSpec) -> dict[str, nn.Module]:
        return {"classifier": make_classifier(cfg.arch, spec)}

    def pretrained(self, cfg, spec: DataSpec) -> list[Component]:
        return []

    def search_space(self, space: dict[str, dict], spec: DataSpec) -> dict[str, dict]:
        """The search space (``search_spaces/<method>.json``'s entries) as searched on ``spec``'s
        data set: a method whose values mean different things per data set adapts it here."""
        return space

    def trainable(self, cfg) -> tuple[str, ...]:
        return ("classifier",)

    def optimizers(self, nets, cfg, total_steps: int):
        opt = torch.optim.SGD(nets["classifier"].parameters(), lr=cfg.lr,
                              momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 1),
                                                    pct_start=0.15, anneal_strategy="cos")
        return {"classifier": opt}, {"classifier": sched}

    def train_step(self, ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def predictor(self, nets, cfg) -> Predictor:
        return Predictor(nets["classifier"])

    def extra_attacks(self, nets, cfg) -> dict[str, Callable]:
        """Unseen attacks that this defense's own networks make possible, by name:
        ``attack(model, x, y, eps) -> x_adv`` (ijsat: the on-manifold attack through its flow).
        An attack whose budget is not the pixel ε it is given says so with attributes ``eps``
        and ``norm``, which the results record instead of ε_eval and "defense"."""
        return {}


def config_fields(cfg_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg_cls)}


def scale_budgets(cfg, spec: DataSpec):
    """Return cfg with every budget field multiplied by the data set's eps_scale."""
    changes = {f.name: getattr(cfg, f.name) * spec.eps_scale
               for f in dataclasses.fields(cfg) if f.metadata.get("eps")}
    return dataclasses.replace(cfg, **changes)


def sgd_step(opt: torch.optim.Optimizer, loss: torch.Tensor, sched=None) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
