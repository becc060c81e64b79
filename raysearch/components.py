"""Cache of pre-trained components (ijsat's flow, atop's classifier and purifier).

A component is trained once per (method, name, data set, architecture, key) and stored under
``<storage>/.components/<name>-<hash>/weights.pt``; every later trial loads it. A file lock on
the storage (``fcntl.flock``, which also works on NFS) makes a second trial that asks at the
same time wait for the first and then load its result instead of training again. Weights are
written atomically and loaded with ``torch.load(weights_only=True)``. A component with a
``check`` (ijsat's flow: bits/dim, round trip, ε_z calibration) is checked on held-out images
after training and cached only if it passes; the check's numbers go into ``key.json``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from raysearch.store import atomic_write_bytes
from trainables.base import Component, DataSpec

log = logging.getLogger(__name__)
CACHE_DIR = ".components"


def component_key(method: str, comp: Component, spec: DataSpec, arch: str) -> dict:
    return {"method": method, "component": comp.name, "dataset": spec.name, "arch": arch,
            **{k: comp.key[k] for k in sorted(comp.key)}}


def component_dir(storage: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(storage) / CACHE_DIR / f"{key['component']}-{digest}"


def ensure(method: str, comps: list[Component], nets: dict[str, nn.Module], cfg, spec: DataSpec,
           storage: Path, batches: Callable[[int], Iterator], device: torch.device,
           arch: str = "", held_out: torch.Tensor | None = None) -> dict[str, str]:
    """Fill ``nets`` for every component, training and caching the ones not cached yet.
    ``held_out``: images outside the training split (the validation split) for the components'
    checks; without them a check sees a batch of training images, and its record says so.
    A check that fails raises, and nothing is cached. Returns {component name: "loaded" | "trained"}."""
    out = {}
    for comp in comps:
        key = component_key(method, comp, spec, arch or getattr(cfg, "arch", ""))
        folder = component_dir(storage, key)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "weights.pt"
        with open(folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second trial waits here while the first trains
            try:
                if weights.exists():
                    state = torch.load(weights, map_location=device, weights_only=True)
                    for role in comp.nets_filled:
                        nets[role].load_state_dict(state[role])
                    out[comp.name] = "loaded"
                    continue
                t0 = time.time()
                log.info("training component %s (%s)", comp.name, folder.name)
                comp.fit(nets, cfg, spec, batches, device)
                report = _check(comp, nets, cfg, spec, batches, held_out, device)
                state = {role: {k: v.detach().cpu() for k, v in nets[role].state_dict().items()}
                         for role in comp.nets_filled}
                atomic_write_bytes(weights, lambda tmp: torch.save(state, tmp))
                (folder / "key.json").write_text(json.dumps(
                    {**key, "seconds": time.time() - t0, **report}, indent=2, default=str))
                out[comp.name] = "trained"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def _check(comp: Component, nets, cfg, spec: DataSpec, batches, held_out, device) -> dict:
    """The component's check (raises if it fails) on held-out images, or on a batch of training
    images when there are none; its numbers under "check" for key.json."""
    if comp.check is None:
        return {}
    images, on = held_out, "held_out"
    if images is None:
        images, on = next(iter(batches(1000)))[0], "train"
    return {"check": {"images": on, **comp.check(nets, cfg, spec, images, device)}}
