"""The final evaluation: per-trial reports, aggregates, masking checks, results store, CLI.

Fixtures train two tiny digits models directly (standard and PGD-AT, a few seconds each) and
save them as a finished experiment would: trial_io checkpoints, trials.parquet with a
``checkpoint`` column, and per-epoch rows in evals.parquet.
"""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysearch import attacks as A
from raysearch import data as data_mod
from raysearch import evaluate as E
from raysearch import store, trial_io
from raysearch.attacks import core
from raysearch.config import default_config
from trainables import REGISTRY
from trainables.base import Predictor
from trainables.common import pgd_linf

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["fgsm", "pgd_ce", "pgd_l2", "jpeg", "gaussian_noise_s3", "contrast_s5", "pgd_eps_x2",
         "pgd_unbounded"]


def cheap(name: str, **params) -> A.AttackSpec:
    """A registered attack with smaller settings, for mechanism tests of the evaluation (the
    reported suite always uses the registry's settings)."""
    a = A.ATTACKS[name]
    rand = None if a.randomized is None else MappingProxyType({**a.randomized, **params})
    return dataclasses.replace(a, params=MappingProxyType({**a.params, **params}), randomized=rand)


PGD = cheap("pgd_ce", steps=20, restarts=1)
SQUARE = cheap("square", n_queries=300)
SWEEP = [cheap(n, steps=20) for n in ("pgd_eps_x1", "pgd_eps_x2", "pgd_unbounded")]


@pytest.fixture(scope="module")
def digits():
    return data_mod.load("digits")


def _train(method: str, digits, epochs: int, seed: int = 0):
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
            loss = F.cross_entropy(f(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    f.eval()
    return cfg, nets, opt


@pytest.fixture(scope="module")
def trained(digits):
    return {"standard": _train("standard", digits, 6), "pgd_at": _train("pgd_at", digits, 4)}


@pytest.fixture()
def experiment(tmp_path, trained, digits):
    """A finished two-trial search on digits, as the search writes it."""
    exp = tmp_path / "exp"
    rows, evals = [], []
    for i, (method, (cfg, nets, opt)) in enumerate(trained.items()):
        tid = f"t{i}"
        ckpt = exp / tid / "checkpoint_000003"
        trial_io.save(ckpt, nets=nets, opts={"classifier": opt}, scheds={}, epoch=3, method=method,
                      dataset="digits", cfg=cfg)
        x, y = data_mod.eval_subset(digits.val, 100)
        f = nets["classifier"]
        clean = (core.predict(f, x) == y).float().mean().item()
        robust = (core.predict(f, pgd_linf(f, x, y, 0.2, 10)) == y).float().mean().item()
        rows.append({"experiment": "exp", "trial_id": tid, "method": method, "dataset": "digits",
                     "arch": "small_cnn", "status": store.COMPLETED, "error": "", "clean_acc": clean,
                     "robust_acc": robust, "eps_eval": 0.2, "epochs": 4, "num_workers": 1,
                     f"{store.HP_PREFIX}lr": 0.05, "checkpoint": str(ckpt), "config_json": "{}"})
        evals.append({"experiment": "exp", "trial_id": tid, "method": method, "dataset": "digits",
                      "stage": "trial", "epoch": 3, "attack": "pgd20_linf", "family": "pgd",
                      "threat": "seen", "norm": "linf", "eps": 0.2, "accuracy": robust, "n": 100,
                      "eot_samples": 1, "seconds": 0.1})
    rows.append({"experiment": "exp", "trial_id": "t9", "method": "standard", "dataset": "digits",
                 "status": store.FAILED, "error": "diverged", "clean_acc": float("nan"),
                 "robust_acc": float("nan"), f"{store.HP_PREFIX}lr": 3.0})
    store.write_trials(exp, rows)
    store.write_evals(exp, evals)
    return exp


def test_evaluate_experiment_writes_results(experiment):
    messages = []
    summary = E.evaluate_experiment(experiment, trial_ids=["t0", "t1"], subset=60, attacks=QUICK,
                                    device="cpu", progress=messages.append)
    assert set(summary["trials"]) == {"t0", "t1"}
    assert messages
    evals = store.read_rows(experiment / store.EVALS)
    trial_rows = [r for r in evals if r["stage"] == "trial"]
    assert len(trial_rows) == 2, "per-epoch rows must be kept"
    final = [r for r in evals if r["stage"] == "final"]
    for tid in ("t0", "t1"):
        attacks = {r["attack"]: r for r in final if r["trial_id"] == tid}
        assert set(QUICK) | {"clean", "worst_seen", "union_unseen", "worst_pgd"} <= set(attacks)
        assert all(r["epoch"] == -1 and r["n"] == 60 for r in attacks.values())
        clean = attacks["clean"]["accuracy"]
        seen = [attacks[a]["accuracy"] for a in QUICK if attacks[a]["threat"] == "seen"]
        unseen = [attacks[a]["accuracy"] for a in QUICK if attacks[a]["threat"] == "unseen"]
        assert all(a <= clean for a in seen + unseen)
        assert attacks["worst_seen"]["accuracy"] <= min(seen)
        assert attacks["union_unseen"]["accuracy"] <= min(unseen)
        assert attacks["pgd_l2"]["norm"] == "l2" and attacks["pgd_l2"]["eps"] == 1.0
        assert attacks["pgd_ce"]["eps"] == 0.2
    # the adversarially trained model is more robust than the standard one
    s = summary["trials"]
    assert s["t1"]["worst_seen"] > s["t0"]["worst_seen"]
    trials = {r["trial_id"]: r for r in store.read_rows(experiment / store.TRIALS)}
    assert trials["t0"]["final_worst_seen"] == s["t0"]["worst_seen"]
    assert trials["t0"]["masking_flags"] == ";".join(s["t0"]["flags"])
    assert trials["t1"]["hp_lr"] == 0.05 and trials["t1"]["checkpoint"]
    assert trials["t9"]["error"] == "diverged" and trials["t9"]["masking_flags"] is None
    # re-running replaces the final rows instead of adding to them
    E.evaluate_experiment(experiment, trial_ids=["t0"], front=False, subset=60, attacks=["fgsm"], device="cpu")
    evals = store.read_rows(experiment / store.EVALS)
    t0_final = [r["attack"] for r in evals if r["stage"] == "final" and r["trial_id"] == "t0"]
    assert "fgsm" in t0_final and "pgd_ce" not in t0_final
    assert sum(r["stage"] == "final" and r["trial_id"] == "t1" for r in evals) == len(final) / 2
    assert "worst_seen" in summary["fronts"] and "t1" in summary["fronts"]["worst_seen"]


def test_candidates_are_the_front():
    rows = [{"trial_id": "a", "status": "completed", "checkpoint": "c", "clean_acc": 0.9, "robust_acc": 0.1},
            {"trial_id": "b", "status": "completed", "checkpoint": "c", "clean_acc": 0.8, "robust_acc": 0.5},
            {"trial_id": "c", "status": "completed", "checkpoint": "c", "clean_acc": 0.7, "robust_acc": 0.4},
            {"trial_id": "d", "status": "failed", "checkpoint": "c", "clean_acc": 0.95, "robust_acc": 0.9},
            {"trial_id": "e", "status": "completed", "checkpoint": None, "clean_acc": 0.99, "robust_acc": 0.9},
            {"trial_id": "f", "status": "completed", "checkpoint": "c", "clean_acc": float("nan"), "robust_acc": 0.9}]
    assert E.candidates(rows) == ["a", "b"]


def test_bad_input(experiment, tmp_path):
    with pytest.raises(E.EvalError):
        E.evaluate_experiment(tmp_path / "nowhere")
    with pytest.raises(E.EvalError):
        E.evaluate_experiment(experiment, trial_ids=["nope"])
    with pytest.raises(E.EvalError):
        E.evaluate_experiment(experiment, attacks=["pgd_bogus"])
    with pytest.raises(E.EvalError):
        E.evaluate_experiment(experiment, subset=0)
    with pytest.raises(E.EvalError):
        E.evaluate_experiment(experiment, threads=0)


class Noisy(nn.Module):
    def __init__(self, model, sigma):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


class Quantize(nn.Module):
    """A non-differentiable preprocessing (zero gradient almost everywhere) before the model;
    with ``straight_through`` the backward pass is the identity (BPDA)."""

    def __init__(self, model, levels=4, straight_through=False):
        super().__init__()
        self.model, self.levels, self.st = model, levels, straight_through

    def forward(self, x):
        q = torch.round(x * self.levels) / self.levels
        if self.st:
            q = x + (q - x).detach()
        return self.model(q)


@pytest.fixture(scope="module")
def robust_model(trained):
    return trained["pgd_at"][1]["classifier"]


@pytest.fixture(scope="module")
def test_images(digits):
    return data_mod.eval_subset(digits.test, 60)


def test_randomized_predictor_gets_eot(robust_model, test_images, digits):
    x, y = test_images
    calls = []
    noisy = Noisy(robust_model, 0.1)
    noisy.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    rep = E.evaluate_predictor(Predictor(noisy, randomized=True), x, y, digits.spec,
                               attacks=[cheap("pgd_ce", steps=3, restarts=1)], eot=20)
    assert rep.randomized and rep.eot == 20
    assert all(r.eot_samples == 20 for r in rep.results)
    # every PGD step saw 20 draws of each attacked image
    assert max(calls) >= 20 * int(rep.clean.sum())
    rows = E.report_rows(rep, {"trial_id": "x"})
    assert {"clean", "clean_per_draw"} <= {r["attack"] for r in rows}
    assert E.FLAG_RANDOM not in rep.flags


def test_eot_counts_draws_of_a_predictor_that_averages_several(robust_model, test_images, digits):
    """A call that already averages 4 draws is made ceil(20 / 4) = 5 times per gradient: 20
    draws, recorded as 20."""
    x, y = test_images
    calls = []
    noisy = Noisy(robust_model, 0.1)
    noisy.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    rep = E.evaluate_predictor(Predictor(noisy, randomized=True, draws_per_call=4), x, y, digits.spec,
                               attacks=[cheap("pgd_ce", steps=3, restarts=1)], eot=20)
    assert rep.eot == 20 and all(r.eot_samples == 20 for r in rep.results)
    assert max(calls) == 5 * len(x) and 5 * int(rep.clean.sum()) in calls  # clean scoring, attack steps


def test_randomized_predictor_gets_autoattacks_rand_protocol(robust_model, test_images, digits):
    """Against a randomized predictor: APGD-T is not run, PGD runs one restart of EOT gradients,
    and Square spends its whole budget at one call per query on every image."""
    x, y = test_images
    noisy = Noisy(robust_model, 0.1)
    rep = E.evaluate_predictor(Predictor(noisy, randomized=True), x, y, digits.spec, eot=20,
                               attacks=[cheap("apgd_t", n_iter=2), cheap("pgd_ce", steps=2), cheap("square", n_queries=25)])
    assert [r.attack for r in rep.results] == ["pgd_ce", "square"]
    sizes = []
    noisy.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    xs, ys = x[:10], y[:10]
    A.run(cheap("square", n_queries=25), noisy, xs, ys, 0.2, eot=20, randomized=True)
    assert sizes == [10] * 26, sizes  # the start, then 25 queries of every image, one draw each
    sizes.clear()
    A.run(cheap("pgd_ce", steps=3), noisy, xs, ys, 0.2, eot=20, randomized=True)
    assert len(sizes) <= 5 and max(sizes) == 200  # one restart: 3 steps (+ final check) of 20 draws


def test_undeclared_randomness_is_flagged(robust_model, test_images, digits):
    x, y = test_images
    rep = E.evaluate_predictor(Predictor(Noisy(robust_model, 0.1), randomized=False), x, y, digits.spec,
                               attacks=["fgsm"])
    assert E.FLAG_RANDOM in rep.flags
    rep = E.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"])
    assert E.FLAG_RANDOM not in rep.flags


def test_bpda_variant_and_masking_flags(robust_model, test_images, digits):
    """Quantization masks the gradient: the real backward finds nothing, BPDA and Square do.
    The family number is the worst case over both variants, and the checks fire."""
    x, y = test_images
    masked = Predictor(Quantize(robust_model), bpda=Quantize(robust_model, straight_through=True))
    x, y = x[:40], y[:40]
    attacks = [PGD, SQUARE, *SWEEP]
    rep = E.evaluate_predictor(masked, x, y, digits.spec, attacks=attacks)
    acc = {r.attack: r.accuracy for r in rep.results}
    assert acc["pgd_ce+bpda"] < acc["pgd_ce"]
    assert rep.aggregates["worst_pgd"][2] <= min(acc["pgd_ce"], acc["pgd_ce+bpda"])
    assert rep.aggregates["worst_seen"][2] <= min(acc["pgd_ce+bpda"], acc["square"])
    assert E.FLAG_BPDA in rep.flags
    # without BPDA, only the gradient-free attack sees through the masking
    rep = E.evaluate_predictor(Predictor(Quantize(robust_model)), x, y, digits.spec, attacks=attacks)
    assert E.FLAG_GRADIENT_FREE in rep.flags
    assert E.FLAG_UNBOUNDED in rep.flags
    # a sound model raises none of these
    rep = E.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=attacks + ["fgsm"])
    assert rep.results[0].attack == "pgd_ce" and len(rep.results) == 6
    assert not set(rep.flags) & {E.FLAG_GRADIENT_FREE, E.FLAG_UNBOUNDED, E.FLAG_EPS, E.FLAG_FGSM}


class Scaled(nn.Module):
    """Logits multiplied by a large factor: the softmax saturates, so the cross-entropy gradient
    underflows to zero for confidently classified images, while margin gradients survive."""

    def __init__(self, model, factor=1e4):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def test_saturated_cross_entropy_is_flagged(robust_model, test_images, digits):
    x, y = test_images
    attacks = [PGD, cheap("pgd_cw", steps=20, restarts=1)]
    rep = E.evaluate_predictor(Predictor(Scaled(robust_model)), x, y, digits.spec, attacks=attacks)
    assert E.FLAG_CE in rep.flags
    rep = E.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=attacks)
    assert E.FLAG_CE not in rep.flags


def test_proxy_gap_is_flagged(experiment):
    rows = store.read_rows(experiment / store.TRIALS)
    for r in rows:
        r.pop("schema_version")
        if r["trial_id"] == "t0":
            r["robust_acc"] = 1.0  # a proxy far above anything the suite will confirm
    store.write_trials(experiment, rows)
    s = E.evaluate_experiment(experiment, trial_ids=["t0", "t1"], front=False, subset=40, attacks=["fgsm"])
    assert E.FLAG_PROXY in s["trials"]["t0"]["flags"] and E.FLAG_PROXY not in s["trials"]["t1"]["flags"]


def test_transfer_from_bare_classifier(trained, test_images, digits):
    """A purifier-like wrapper whose gradient is masked: transfer from the bare classifier
    beats the white-box attack on the wrapper, and is flagged."""
    x, y = test_images
    f = trained["standard"][1]["classifier"]
    rep = E.evaluate_predictor(Predictor(Quantize(f, levels=8)), x, y, digits.spec,
                               attacks=[PGD, cheap("transfer_pgd", steps=20, restarts=1)], surrogate=f)
    assert "transfer_pgd" in {r.attack for r in rep.results}
    assert E.FLAG_TRANSFER in rep.flags
    rep = E.evaluate_predictor(Predictor(f), x, y, digits.spec, attacks=["transfer_pgd"], surrogate=f)
    assert not rep.results, "no transfer attack when the surrogate is the predictor itself"


def test_defense_extra_attacks_are_unseen(robust_model, test_images, digits):
    x, y = test_images
    seen = []

    def shift(model, xb, yb, eps):
        seen.append(eps)
        return (xb + eps).clamp(0, 1)

    rep = E.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"],
                               extra={"brighten": shift})
    r = {r.attack: r for r in rep.results}["brighten"]
    assert r.threat == "unseen" and seen == [digits.spec.eps_eval]
    assert r.eps == digits.spec.eps_eval and r.norm == E.DEFENSE
    assert rep.aggregates["union_unseen"][2] == r.accuracy
    # an attack with its own budget (ijsat's latent radius) is recorded with it
    shift.eps, shift.norm = 0.5, "latent_linf"
    rep = E.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"],
                               extra={"brighten": shift})
    r = {r.attack: r for r in rep.results}["brighten"]
    assert (r.eps, r.norm) == (0.5, "latent_linf")


def test_cli_bad_input(experiment, tmp_path, capsys):
    for args, expect in [(["--experiment", str(tmp_path / "missing")], "not found"),
                         (["--experiment", str(experiment), "--attacks", "nope"], "unknown attack"),
                         (["--experiment", str(experiment), "--trials", "nope"], "unknown trial"),
                         (["--experiment", str(experiment), "--subset", "x"], "invalid int"),
                         (["--experiment", str(experiment), "--eot", "0"], "eot must be")]:
        with pytest.raises(SystemExit) as exc:
            sys.exit(E.main(args))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and expect in err, (args, err)


def test_cli(experiment):
    p = subprocess.run([sys.executable, "-m", "raysearch.evaluate", "--experiment", str(experiment),
                        "--trials", "t1", "--only-trials", "--subset", "40", "--attacks", "fgsm", "jpeg",
                        "contrast_s5", "--device", "cpu", "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "trial t1" in p.stdout and "worst_seen" in p.stdout and "masking flags" in p.stdout
    assert "front" in p.stdout
    rows = store.read_rows(experiment / store.EVALS)
    assert {r["attack"] for r in rows if r["stage"] == "final"} >= {"clean", "fgsm", "jpeg", "contrast_s5"}


def test_one_failed_trial_keeps_the_others(experiment, capsys):
    """A trial whose suite fails (here: its weights file is damaged) is reported in one line; the
    other trial's results are written and the CLI exits non-zero."""
    state = experiment / "t0" / "checkpoint_000003" / trial_io.STATE
    state.write_bytes(state.read_bytes()[:100])
    summary = E.evaluate_experiment(experiment, trial_ids=["t0", "t1"], subset=40, attacks=["fgsm"], device="cpu")
    assert set(summary["failed"]) == {"t0"} and set(summary["trials"]) == {"t1"}
    final = {r["trial_id"] for r in store.read_rows(experiment / store.EVALS) if r["stage"] == "final"}
    assert final == {"t1"}
    trials = {r["trial_id"]: r for r in store.read_rows(experiment / store.TRIALS)}
    assert trials["t1"]["final_worst_seen"] == summary["trials"]["t1"]["worst_seen"]
    assert trials["t0"]["final_worst_seen"] is None or math.isnan(trials["t0"]["final_worst_seen"])
    code = E.main(["--experiment", str(experiment), "--trials", "t0", "t1", "--only-trials", "--subset", "40",
                   "--attacks", "fgsm", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "trial t0: final evaluation failed" in err and "Traceback" not in err
