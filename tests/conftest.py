"""Shared fixtures. ``results_root`` runs the real CLI once per test session (real local Ray
with its dashboard, real Optuna, real Parquet) and is reused by every test that reads results."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# Tiny models gain nothing from intra-op threads, and on 2 cores shared with Ray workers the
# second thread mostly waits: one thread per test process.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The bundled digits data set (test modules may define their own ``digits``)."""
    from raysearch import data

    return data.load("digits")


def fresh_context(defense, spec, seed: int = 0, **changes):
    """A StepContext over freshly built networks of ``defense`` (config defaults for ``spec``
    with ``changes``), 50 steps per epoch, no pre-trained components."""
    from raysearch.config import default_config
    from raysearch.local import step_context

    torch.manual_seed(seed)
    cfg = dataclasses.replace(default_config(defense.name, spec), **changes)
    return step_context(defense, cfg, spec, defense.build(cfg, spec), total_steps=50, steps_per_epoch=50)


def params(net) -> list[torch.Tensor]:
    """A copy of a network's parameters, to compare after a step."""
    return [p.detach().clone() for p in net.parameters()]


def changed(before: list[torch.Tensor], net) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900, module: str = "raysearch.tune",
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` as a user would; returns the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


TINY = ("--num-samples", "3", "--max-epochs", "2", "--eval-size", "120", "--final-eval-size", "60",
        "--eot-samples", "20")


@pytest.fixture(scope="session")
def results_root(tmp_path_factory) -> Path:
    """A results root holding two finished tiny searches (pgd_at and standard, with the final
    evaluation), produced by the real command line."""
    root = tmp_path_factory.mktemp("results")
    for method in ("pgd_at", "standard"):
        proc = run_cli("--method", method, "--storage-path", str(root), "--name", f"tiny-{method}", *TINY)
        assert proc.returncode == 0, f"search {method} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        (root / f"tiny-{method}" / "cli_output.txt").write_text(proc.stdout)
    return root
