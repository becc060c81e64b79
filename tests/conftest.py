"""Shared fixtures and helpers: the digits data set and a component cache built once per session,
a trial context factory (``fresh_context``), parameter snapshots, and ``results_root``, which runs
the real CLI once per test session (real local Ray with its dashboard, real Optuna, real Parquet)
and is reused by every test that reads results; two digits models trained once per process
(standard and PGD-AT) and a finished experiment built from them, for the evaluation tests."""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional

from raysearch import data as data_mod
from raysearch import schema, store, trial_io
from raysearch.attacks import core
from raysearch.config import default_config
from raysearch.schema import Stage, Status, Threat
from trainables import REGISTRY
from trainables.common import pgd_linf

ROOT = Path(__file__).resolve().parents[1]


# Tiny models gain nothing from intra-op threads, and on 2 cores shared with Ray workers the
# second thread mostly waits: one thread per test process.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The bundled digits data set, loaded once per session (tests read it, never change it)."""
    from raysearch import data

    return data.load("digits")


@pytest.fixture(scope="session")
def component_store(tmp_path_factory) -> Path:
    """A cache folder for pre-trained components shared by the session: a component is trained
    once per configuration however many tests ask for it."""
    return tmp_path_factory.mktemp("components")


def fresh_context(defense, spec, seed: int = 0, **changes):
    """A trial's StepContext over freshly built networks of ``defense`` (config defaults for
    ``spec`` with ``changes``), 50 steps per epoch, no pre-trained components."""
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


def python_c(code: str) -> str:
    """Run ``python -c code`` in a fresh interpreter from the project root (what a fresh process
    imports and prints); asserts it exited 0 and returns its standard output."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


TINY_TRIALS = 2
# one trial at a time per search: the two searches run side by side, so the two cores are busy
# (four trials starting at once on two cores made this fixture ≈ 15% slower)
TINY = ("--num-samples", str(TINY_TRIALS), "--max-concurrent", "1", "--max-epochs", "2", "--eval-size", "60", "--final-eval-size", "40",
        "--final-candidates", "front", "--eot-samples", "20")
SPEED_FLAGS = ("--bf16", "--channels-last", "--loader-workers", "1")


@pytest.fixture(scope="session")
def results_root(tmp_path_factory) -> Path:
    """A results root holding two finished tiny searches (pgd_at and standard, with the final
    evaluation), produced by the real command line; the standard one trains with the speed
    flags (``SPEED_FLAGS``)."""
    root = tmp_path_factory.mktemp("results")
    # side by side, each with its own local Ray, as two users' searches on one machine; their
    # output goes to files (a pipe left unread while the other search is awaited could fill up)
    logs = tmp_path_factory.mktemp("results-logs")
    procs = {}
    try:
        for method in ("pgd_at", "standard"):
            with open(logs / f"{method}.out", "w") as out, open(logs / f"{method}.err", "w") as err:
                procs[method] = subprocess.Popen(
                    [sys.executable, "-m", "raysearch.tune", "--method", method, "--storage-path", str(root),
                     "--name", f"tiny-{method}", *TINY, *(SPEED_FLAGS if method == "standard" else ())],
                    cwd=ROOT, text=True, stdout=out, stderr=err,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for method, proc in procs.items():
            proc.wait(timeout=900)
            out, err = ((logs / f"{method}.{kind}").read_text() for kind in ("out", "err"))
            assert proc.returncode == 0, f"search {method} failed:\n{out[-3000:]}\n{err[-3000:]}"
            (root / f"tiny-{method}" / "cli_output.txt").write_text(out)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return root


# ---------------------------------------------------------------- trained digits models (evaluation tests)

def _train_classifier(method: str, digits, epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = default_config(method, digits.spec)
    defense = REGISTRY[method]
    nets = defense.build(cfg, digits.spec)
    f = nets["classifier"]
    opt = torch.optim.SGD(f.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x, y = digits.train.images(), digits.train.y
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            xb, yb = x[perm[i:i + 64]], y[perm[i:i + 64]]
            if method == "pgd_at":
                f.eval()
                xb = pgd_linf(f, xb, yb, cfg.eps_train, 5, 2.5 * cfg.eps_train / 5)
                f.train()
            loss = functional.cross_entropy(f(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    f.eval()
    return cfg, nets, opt


@functools.cache
def _trained_models():
    digits = data_mod.load("digits")
    return {"standard": _train_classifier("standard", digits, 6), "pgd_at": _train_classifier("pgd_at", digits, 4)}


@pytest.fixture(scope="module")
def trained():
    """{method: (cfg, nets, optimizer)} for standard and PGD-AT training on digits."""
    return _trained_models()


@pytest.fixture(scope="module")
def robust_model(trained):
    return trained["pgd_at"][1]["classifier"]


@pytest.fixture(scope="module")
def test_images(digits):
    return data_mod.eval_subset(digits.test, 60)


@pytest.fixture()
def experiment(tmp_path, trained, digits):
    """A finished two-trial search on digits, as the search writes it."""
    exp_dir = tmp_path / "exp"
    rows, evals = [], []
    for i, (method, (cfg, nets, opt)) in enumerate(trained.items()):
        tid = f"t{i}"
        ckpt = exp_dir / tid / "checkpoint_000003"
        trial_io.save(ckpt, nets=nets, opts={"classifier": opt}, scheds={}, epoch=3, method=method,
                      dataset="digits", cfg=cfg)
        x, y = data_mod.eval_subset(digits.val, 100)
        f = nets["classifier"]
        clean = (core.predict(f, x) == y).float().mean().item()
        robust = (core.predict(f, pgd_linf(f, x, y, 0.2, 10)) == y).float().mean().item()
        row = schema.trial_row(experiment="exp", trial_id=tid, method=method, dataset="digits", arch="small_cnn",
                               eps_eval=0.2, num_workers=1, started_at=0.0, config={"lr": 0.05})
        row.update(status=Status.COMPLETED, error="", clean_acc=clean, robust_acc=robust, epochs=4,
                   checkpoint=str(ckpt))
        rows.append(row)
        evals.append(schema.eval_row(experiment="exp", trial_id=tid, method=method, dataset="digits",
                                     stage=Stage.TRIAL, epoch=3, attack="pgd20_linf", family="pgd",
                                     threat=Threat.SEEN, norm="linf", eps=0.2, accuracy=robust, n=100,
                                     eot_samples=1, scoring_calls=1, queries=0, restarts=1,
                                     iterations=10, protocol="standard", seconds=0.1))
    failed = schema.trial_row(experiment="exp", trial_id="t9", method="standard", dataset="digits",
                              arch="small_cnn", eps_eval=0.2, num_workers=1, started_at=0.0, config={"lr": 3.0})
    failed.update(status=Status.FAILED, error="diverged", clean_acc=float("nan"), robust_acc=float("nan"))
    rows.append(failed)
    store.write_trials(exp_dir, rows)
    store.write_evals(exp_dir, evals)
    return exp_dir
