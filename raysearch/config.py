"""Experiment and trial configuration: frozen dataclasses, and the rules that build a trial's
method config. Precedence: method default (budgets scaled to the data set) < search-space sample
< ``--set key=value``.

The defense registry (and so torch) is imported inside the functions that use it: each trial's
Ray Train controller unpickles the ``ExperimentConfig`` in its loop config, and importing torch
there would cost every trial ≈ 1.8 s of start-up (see README, 'Why Ray is configured as it is').
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.spec import DataSpec


class ConfigError(ValueError):
    """Bad user input; the message is one line for the user."""


@dataclass(frozen=True)
class ExperimentConfig:
    method: str
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = False
    arch: str = "auto"
    sampler: str = "gp"
    num_samples: int = 12
    seed: int = 0
    max_epochs: int = 8
    storage_path: str = "ray_results"
    name: str = ""
    resume: bool = False
    sets: tuple[tuple[str, Any], ...] = ()  # (field, value) fixed for every trial
    eps_eval: float = 0.0  # 0: the data set's default (8/255 on CIFAR/SVHN, 0.3 on MNIST, 0.2 on digits)
    eps_list: tuple[float, ...] = ()  # L∞ radii on [0, 1] at which the final evaluation also runs the seen attacks
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    address: str = ""
    eval_size: int = 500  # validation images for the per-epoch proxy
    # per-epoch proxy: gradient steps of each attack run (PGD-margin, PGD-CE, APGD-T per target;
    # real gradient and BPDA), EOT draws per gradient for randomized predictors, epochs between
    # two proxies (always after the last; the CLI's default per method and scheduler is
    # raysearch.evaluate.proxy.default_eval_every), chosen so that the proxy is at most about a
    # quarter of a trial's time (bench/proxy_cost.py)
    eval_steps: int = 20
    eval_eot: int = 2
    eval_every: int = 1
    eot_samples: int = 20  # EOT gradient samples for randomized predictors in the final suite
    # memory budget of evaluation attacks, e.g. "2GB" (powers of 1024); "": the device's free
    # memory on CUDA, a quarter of the available RAM on CPU (raysearch.attacks.memory)
    eval_memory: str = ""
    final_eval: bool = True
    final_eval_size: int = 1000  # test images for the final suite
    # which trials the final suite attacks: "front", "band" (the front and the trials near it),
    # "all", or K as digits (raysearch.evaluate.candidates)
    final_candidates: str = "band"
    max_failures: int = 1  # Train worker-group restarts from the last checkpoint per trial
    max_concurrent: int = 0  # 0: derived from the cluster's resources
    scheduler: str = "none"  # a key of raysearch.search.schedulers.SCHEDULERS
    grace_period: int = 1  # MO-ASHA: epochs every trial runs before it can be stopped
    reduction_factor: float = 3.0  # MO-ASHA: 1/reduction_factor of the trials at a rung go on
    perturbation_interval: int = 2  # MO-PBT: epochs between two rankings of a trial in the population
    # speed options of the training loop (raysearch.perf)
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    loader_workers: int = 0  # DataLoader worker processes per training worker
    data_on_device: str = "auto"  # "auto" | "on" | "off": hold the training split on the device
    verbose: bool = False

    @property
    def exp_dir(self) -> Path:
        """The experiment's folder: ``<storage_path>/<name>``."""
        return Path(self.storage_path) / self.name


def parse_set(items: list[str], method: str) -> tuple[tuple[str, Any], ...]:
    """``key=value`` pairs, values parsed with ast.literal_eval and type-checked against the
    method's config field."""
    from trainables import REGISTRY
    from trainables.base import config_fields

    fields = config_fields(REGISTRY[method].Config)
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in fields:
            raise ConfigError(f"--set {key}: method {method} has no such field; "
                              f"known: {', '.join(sorted(fields))}")
        out.append((key, coerce(key, text.strip(), fields[key], method)))
    return tuple(out)


def coerce(key: str, text: str, f: dataclasses.Field, method: str) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # bare words are strings
    typ = _field_type(f, method)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ in (int, float, bool, str) and type(value) is not typ:
        raise ConfigError(f"--set {key}={text}: expected {typ.__name__}, got {type(value).__name__}")
    return value


def _field_type(f: dataclasses.Field, method: str):
    from trainables import REGISTRY

    hints = typing.get_type_hints(REGISTRY[method].Config)
    return hints.get(f.name, f.type)


def default_config(method: str, spec: DataSpec):
    """The method's defaults with budget fields scaled to the data set."""
    from trainables import REGISTRY
    from trainables.base import scale_budgets

    return scale_budgets(REGISTRY[method].Config(), spec)


def trial_config(method: str, spec: DataSpec, sampled: dict[str, Any], sets: dict[str, Any],
                 epochs: int, arch: str):
    """Defaults < sampled < --set; epochs and architecture come from the experiment."""
    from trainables.base import config_fields

    cfg = default_config(method, spec)
    known = config_fields(type(cfg))
    changes = {"epochs": epochs, "arch": arch}
    for k, v in {**sampled, **sets}.items():
        if k not in known:
            raise ConfigError(f"{k}: method {method} has no such field")
        changes[k] = v
    return dataclasses.replace(cfg, **changes)


def config_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
