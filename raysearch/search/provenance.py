"""What experiment.json records about a search besides its results: the experiment config, the
data set's spec (shape, classes, normalization, radii), the search space, the objectives, library
versions, the code's git revision and whether its checkout had uncommitted changes, and the
hardware."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import subprocess
import sys
import time
from pathlib import Path

from raysearch import data as data_mod
from raysearch.config import ExperimentConfig
from raysearch.schema import SCHEMA_VERSION
from raysearch.search.searcher import OBJECTIVES

CHECKOUT = Path(__file__).resolve().parent  # any folder inside the project's git checkout
# module name -> distribution name; versions are read from the installed metadata, not by importing
# the modules (importing torchvision and POT costs every search's driver seconds of start-up)
LIBRARIES = {"torch": "torch", "torchvision": "torchvision", "ray": "ray", "optuna": "optuna",
             "pyarrow": "pyarrow", "numpy": "numpy", "normflows": "normflows", "ot": "POT"}


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess | None:
    """``git args`` run in ``folder``; None where git cannot run."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=folder)
    except (OSError, subprocess.SubprocessError):
        return None


def git_revision(folder: Path = CHECKOUT) -> str:
    """The commit checked out at ``folder`` ('' where git or the checkout is unavailable)."""
    proc = _git(folder, "rev-parse", "HEAD")
    return proc.stdout.strip() if proc is not None else ""


def git_dirty(folder: Path = CHECKOUT) -> bool | None:
    """Whether the checkout holding ``folder`` has changes or untracked files that are not
    committed (``git status --porcelain`` prints anything); None where git or the checkout is
    unavailable."""
    proc = _git(folder, "status", "--porcelain")
    if proc is None or proc.returncode != 0:
        return None
    return bool(proc.stdout.strip())


def library_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (None where it is not installed)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(exp: ExperimentConfig, space: dict, resources: dict) -> dict:
    """experiment.json's content. ``space``: the searched part of the search space as data;
    ``resources``: the Ray cluster's."""
    import torch

    versions = {mod: library_version(dist) for mod, dist in LIBRARIES.items()}
    versions["torch"] = torch.__version__  # with its build tag (+cu130, +cpu), which the metadata lacks
    return {"schema_version": SCHEMA_VERSION, "config": dataclasses.asdict(exp),
            "data_spec": dataclasses.asdict(data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval)),
            "objectives": list(OBJECTIVES), "search_space": space, "versions": versions,
            "git_revision": git_revision(), "git_dirty": git_dirty(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "hardware": {"cluster_resources": resources,
                         "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
            "created_at": time.time()}
