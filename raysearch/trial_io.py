"""Checkpoints of one trial, and rebuilding a trained trial's predictor from them.

A checkpoint folder holds ``state.pt`` (every network's state, optimizers, schedulers, epoch;
plain tensors and numbers, loaded with ``weights_only=True``) and ``meta.json`` (method,
data set, full config). Nothing here imports Ray.

The results store a checkpoint folder relative to the experiment folder
(``train/<trial>/checkpoint_000007``), so an experiment folder can be moved or copied whole
(``relative_to_experiment``); ``checkpoint_folder`` finds it again, also from the absolute
paths of results written before that.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from trainables import REGISTRY
from trainables.base import Predictor

STATE, META = "state.pt", "meta.json"


def save(folder: Path, *, nets, opts, scheds, epoch: int, method: str, dataset: str, cfg,
         extra: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "nets": {k: _unwrap(m).state_dict() for k, m in nets.items()},
        "opts": {k: o.state_dict() for k, o in opts.items()},
        "scheds": {k: s.state_dict() for k, s in scheds.items()},
    }
    torch.save(state, folder / STATE)
    meta = {"epoch": epoch, "method": method, "dataset": dataset,
            "config": dataclasses.asdict(cfg), **(extra or {})}
    (folder / META).write_text(json.dumps(meta, indent=2, default=str))


def load_state(folder: Path, device="cpu") -> dict[str, Any]:
    return torch.load(Path(folder) / STATE, map_location=device, weights_only=True)


def load_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META).read_text())


def restore(state, nets, opts=None, scheds=None) -> int:
    """Load a saved state into live objects; returns the epoch it was saved after."""
    for k, m in nets.items():
        _unwrap(m).load_state_dict(state["nets"][k])
    for k, o in (opts or {}).items():
        o.load_state_dict(state["opts"][k])
    for k, s in (scheds or {}).items():
        s.load_state_dict(state["scheds"][k])
    return int(state["epoch"])


def rebuild(folder: Path, spec, device="cpu") -> tuple[Any, Any, dict, Predictor]:
    """(defense, cfg, nets, predictor) of a trained trial, in eval mode on ``device``."""
    meta = load_meta(folder)
    defense = REGISTRY[meta["method"]]
    cfg = defense.Config(**meta["config"])
    nets = defense.build(cfg, spec)
    restore(load_state(folder, device), nets)
    for m in nets.values():
        m.to(device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return defense, cfg, nets, defense.predictor(nets, cfg)


def relative_to_experiment(path: str | os.PathLike, exp_dir: str | os.PathLike) -> str:
    """``path`` relative to ``exp_dir`` when it lies inside it (both made absolute, symlinks
    followed, so a relative storage path and Ray's absolute checkpoint paths compare), else
    unchanged; "" stays "". What the results store for a path inside the experiment."""
    if not path:
        return ""
    for resolve in (os.path.abspath, os.path.realpath):
        target, root = Path(resolve(path)), Path(resolve(exp_dir))
        if target.is_relative_to(root):
            return target.relative_to(root).as_posix()
    return str(path)


def checkpoint_folder(exp_dir: str | os.PathLike, stored: str | os.PathLike) -> Path | None:
    """The checkpoint folder a trial's stored ``checkpoint`` names (None if none holds a
    checkpoint): relative paths against ``exp_dir``, the folder the experiment is in now.
    Results written before paths were relative hold absolute ones (or ones relative to the
    search's working folder); those are taken as they are if they still hold the checkpoint,
    else their tails are tried below ``exp_dir`` (longest first), so a moved old experiment
    is found too."""
    if not stored:
        return None
    exp_dir, path = Path(exp_dir), Path(stored)
    tails = path.parts[1:]  # an absolute path's root or a relative one's first folder dropped
    candidates = ([] if path.is_absolute() else [exp_dir / path]) + [path]
    candidates += [exp_dir.joinpath(*tails[i:]) for i in range(len(tails))]
    return next((c for c in candidates if (c / META).is_file()), None)


def _unwrap(m):
    return getattr(m, "module", m)
