"""Final evaluation: the full attack suite on the Pareto candidates of a finished search.

For each candidate trial the trained predictor is rebuilt from its last checkpoint and attacked
on a fixed subset of the *test* split (fixed seed), with every attack of the suite
(``raysearch.attacks``): seen (L∞ at the trial's ε_eval: FGSM, PGD-CE/-CW with restarts,
APGD-CE/-DLR/-T, Square, transfer from the bare classifier) and unseen (L2 PGD/APGD, StAdv,
ReColor, JPEG, common corruptions, and the attacks the defense itself offers).

Honesty rules:
* Randomized predictors are attacked with EOT (gradients and scores averaged over ``eot``
  draws, 20 by default) and scored on softmax probabilities averaged over ``eot`` draws
  (clean and adversarial alike). A predictor that averages k draws per call (atop's n_masks)
  is called ceil(eot / k) times. The mean single-call clean accuracy is reported beside it.
* Predictors with a BPDA pipeline are attacked through the real backward pass *and* through
  BPDA with every white-box attack (only the seen ones if the predictor is also randomized);
  each is a row, and every aggregate takes the worst case over them. Randomized predictors
  get the attack settings of AutoAttack's rand version (see ``raysearch.attacks``).
* An image counts as robust to an attack only if it is classified correctly both clean and
  attacked. Per family the number is the per-image worst case over the family's attacks and
  variants; over seen attacks the per-image worst case ("worst_seen"), over unseen attacks the
  union ("union_unseen": robust only if it survives every unseen attack).
* Gradient-masking checks, stored with the results: a gradient-free or transfer attack beating
  every white-box attack, FGSM beating PGD, BPDA beating the real backward pass, CE-loss
  attacks far weaker than margin/DLR ones (saturated CE, the Feature Scattering hazard),
  accuracy not falling with ε or not reaching ~0 at ε = 1, randomness that the predictor does
  not declare (two calls on the same input disagree), and the search's per-epoch proxy
  overstating the final worst case by more than 10 points.

Results: one row per trial × attack in ``evals.parquet`` (stage "final", epoch −1; rows of the
same trials from an earlier final evaluation are replaced, per-epoch rows are kept), and the
columns ``final_clean_acc``, ``final_worst_seen``, ``final_union_unseen``, ``masking_flags``
(';'-joined, '' if none) in ``trials.parquet``.

CLI: ``python -m raysearch.evaluate --experiment <storage>/<name> [--trials ID ...]
[--subset N] [--eot N] [--attacks NAME|GROUP ...]``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from raysearch import attacks as A
from raysearch import pareto, store
from raysearch.attacks import core
from trainables.base import DataSpec, Predictor

log = logging.getLogger(__name__)

DEFENSE = "defense"  # pseudo attack name: every attack the trial's defense offers
GROUPS = ("default", "seen", "unseen", "check", DEFENSE)
DEFAULT_EOT = 20
DEFAULT_SUBSET = 1000
UNBOUNDED_MAX_ACC = 0.02  # accuracy at ε = 1 (any image) above this (+ noise tolerance): attack not working

# masking flags
FLAG_RANDOM = "unflagged_randomness"
FLAG_GRADIENT_FREE = "gradient_free_beats_whitebox"
FLAG_TRANSFER = "transfer_beats_whitebox"
FLAG_FGSM = "fgsm_beats_pgd"
FLAG_BPDA = "bpda_beats_backward"
FLAG_EPS = "accuracy_not_falling_with_eps"
FLAG_UNBOUNDED = "unbounded_attack_fails"
FLAG_CE = "ce_weaker_than_margin"
FLAG_PROXY = "proxy_overestimates_robustness"
CE_GAP = 0.05  # CE attacks leaving this much more accuracy than CW/DLR ones: CE saturates
PROXY_GAP = 0.10  # per-epoch proxy this much above the final worst case: the search was misled


class EvalError(ValueError):
    """Bad input to the final evaluation; the message is one line for the user."""


@dataclass
class AttackResult:
    attack: str  # registry name, "+bpda" appended for the BPDA variant
    family: str
    threat: str
    norm: str
    eps: float
    robust: torch.Tensor  # bool per image (clean-correct and attack-survived)
    eot_samples: int
    seconds: float
    gradient: bool = True
    surrogate: bool = False

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else math.nan


@dataclass
class PredictorReport:
    n: int
    clean: torch.Tensor  # bool per image
    clean_per_draw: float  # mean single-call clean accuracy (= clean accuracy if deterministic)
    randomized: bool
    eot: int
    results: list[AttackResult] = field(default_factory=list)
    aggregates: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # name -> (family, threat, acc)
    flags: list[str] = field(default_factory=list)
    draws_per_call: int = 1  # random draws one predictor call averages

    @property
    def clean_acc(self) -> float:
        return float(self.clean.float().mean())

    def accuracy(self, name: str) -> float:
        if name in self.aggregates:
            return self.aggregates[name][2]
        for r in self.results:
            if r.attack == name:
                return r.accuracy
        return math.nan


def expand_attacks(names: Iterable[str | A.AttackSpec] | None) -> tuple[list[A.AttackSpec], bool]:
    """Attacks for a list of registry names, groups (see GROUPS) and ``AttackSpec`` objects
    (attacks outside the registry); second item: include the defense's own attacks. None means
    the default suite plus the defense's attacks."""
    if names is None:
        return [A.ATTACKS[n] for n in A.DEFAULT_SUITE], True
    out: dict[str, A.AttackSpec] = {}
    defense = False
    for name in names:
        if isinstance(name, A.AttackSpec):
            out[name.name] = name
        elif name == DEFENSE:
            defense = True
        elif name == "default":
            out.update((n, A.ATTACKS[n]) for n in A.DEFAULT_SUITE)
            defense = True
        elif name in (A.SEEN, A.UNSEEN, A.CHECK):
            out.update((n, A.ATTACKS[n]) for n in A.DEFAULT_SUITE if A.ATTACKS[n].threat == name)
        elif name in A.ATTACKS:
            out[name] = A.ATTACKS[name]
        else:
            raise EvalError(f"unknown attack {name!r}; known: {', '.join(list(A.ATTACKS) + list(GROUPS))}")
    return list(out.values()), defense


def _randomness_leak(model: Callable, x: torch.Tensor) -> bool:
    """True if two calls on the same images give different logits (beyond float noise)."""
    with torch.no_grad():
        a, b = model(x), model(x)
    return not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-6)


def _check_range(name: str, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    if x_adv.shape != x.shape:
        raise RuntimeError(f"{name}: returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if len(x) and (not torch.isfinite(x_adv).all() or x_adv.min() < 0 or x_adv.max() > 1):
        raise RuntimeError(f"{name}: adversarial images outside [0, 1]")


def _check_budget(attack: A.AttackSpec, x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> None:
    """Refuse to report a number from an attack that left [0, 1] or its ε-ball."""
    _check_range(attack.name, x, x_adv)
    if not len(x):
        return
    d = (x_adv - x).flatten(1)
    if attack.norm == "linf" and d.abs().max() > eps * (1 + 1e-5) + 1e-6:
        raise RuntimeError(f"{attack.name}: L∞ perturbation {d.abs().max():.4g} exceeds ε {eps:.4g}")
    if attack.norm == "l2" and d.norm(dim=1).max() > eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"{attack.name}: L2 perturbation {d.norm(dim=1).max():.4g} exceeds ε {eps:.4g}")


def _attack_images(fn: Callable, model: Callable, x: torch.Tensor, y: torch.Tensor, eps: float,
                   eot: int, seed: int, batch_size: int) -> torch.Tensor:
    out = [fn(model, x[i:i + batch_size], y[i:i + batch_size], eps, eot=eot, seed=seed * 100003 + i)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else x.clone()


def evaluate_predictor(pred: Predictor, x: torch.Tensor, y: torch.Tensor, spec: DataSpec, *,
                       eps_eval: float | None = None, attacks: Iterable[str | A.AttackSpec] | None = None,
                       eot: int = DEFAULT_EOT, seed: int = 0, surrogate: Callable | None = None,
                       extra: dict[str, Callable] | None = None, batch_size: int = 500,
                       progress: Callable[[str], None] | None = None) -> PredictorReport:
    """Run the suite on one predictor. ``surrogate``: the bare classifier for transfer attacks
    (skipped when absent or when it is the predictor itself). ``extra``: the defense's own
    attacks, ``fn(model, x, y, eps) -> x_adv``, run at ε_eval as unseen attacks."""
    if eot < 1:
        raise EvalError(f"eot must be >= 1, got {eot}")
    suite, _ = expand_attacks(attacks)
    eps_eval = spec.eps_eval if eps_eval is None else float(eps_eval)
    calls = pred.calls(eot)  # per gradient and per score; each averages pred.draws_per_call draws
    if pred.randomized and eot < DEFAULT_EOT:
        log.warning("randomized predictor attacked with EOT %d < %d draws: gradients and scores are "
                    "noisier than the standard protocol", eot, DEFAULT_EOT)
    model = pred.model
    with torch.no_grad():
        if pred.randomized:
            per_draw = np.mean([(core.predict(model, x, 1) == y).float().mean().item() for _ in range(calls)])
        clean = core.predict(model, x, calls) == y
    rep = PredictorReport(len(y), clean, float(per_draw) if pred.randomized else float(clean.float().mean()),
                          pred.randomized, pred.draws(eot), draws_per_call=pred.draws_per_call)
    if not pred.randomized and _randomness_leak(model, x[: min(len(x), 64)]):
        rep.flags.append(FLAG_RANDOM)
    idx = clean.nonzero().squeeze(1)
    xc, yc = x[idx], y[idx]

    def score(x_adv: torch.Tensor) -> torch.Tensor:
        robust = torch.zeros_like(clean)
        if len(idx):
            robust[idx] = core.predict(model, x_adv, calls) == yc
        return robust

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    for attack in suite:
        name = attack.name
        eps = A.budget(attack, spec, eps_eval)
        if attack.surrogate:
            if surrogate is None or surrogate is model:
                continue
            variants = [("", surrogate, 1)]
        elif pred.randomized and attack.randomized is None:
            continue  # not part of the protocol for randomized predictors (AutoAttack's rand version)
        else:
            variants = [("", model, calls)]
            # BPDA on every white-box attack; on a randomized predictor (20 draws per gradient)
            # on the seen ones, which the robust accuracy is taken from
            if pred.bpda is not None and attack.gradient and (attack.threat == A.SEEN or not pred.randomized):
                variants.append(("+bpda", pred.bpda, calls))
        rand = pred.randomized and not attack.surrogate
        for suffix, target, k in variants:
            t0 = time.perf_counter()
            x_adv = _attack_images(lambda *a, **kw: A.run(attack, *a, randomized=rand, **kw), target, xc, yc, eps,
                                   k, seed, batch_size)
            _check_budget(attack, xc, x_adv, eps)
            res = AttackResult(name + suffix, attack.family, attack.threat, attack.norm, eps, score(x_adv),
                               rep.eot, time.perf_counter() - t0, attack.gradient, attack.surrogate)
            rep.results.append(res)
            say(f"{res.attack:22s} acc {res.accuracy:.3f}  ({res.seconds:.1f} s)")
    for name, fn in (extra or {}).items():
        variants = [("", model)] + ([("+bpda", pred.bpda)] if pred.bpda is not None else [])
        for suffix, target in variants:
            target = core.MeanOfDraws(target, calls) if calls > 1 else target
            t0 = time.perf_counter()
            x_adv = _attack_images(lambda m, xb, yb, e, eot, seed: fn(m, xb, yb, e), target, xc, yc,
                                   eps_eval, 1, seed, batch_size)
            _check_range(name, xc, x_adv)
            res = AttackResult(name + suffix, name, A.UNSEEN, getattr(fn, "norm", DEFENSE),
                               float(getattr(fn, "eps", eps_eval)), score(x_adv), rep.eot,
                               time.perf_counter() - t0)
            rep.results.append(res)
            say(f"{res.attack:22s} acc {res.accuracy:.3f}  ({res.seconds:.1f} s)")
    _aggregate(rep)
    rep.flags += masking_flags(rep)
    return rep


def _all(results: list[AttackResult], clean: torch.Tensor) -> torch.Tensor:
    robust = clean.clone()
    for r in results:
        robust &= r.robust
    return robust


def _aggregate(rep: PredictorReport) -> None:
    counted = [r for r in rep.results if r.threat in (A.SEEN, A.UNSEEN)]
    for fam in dict.fromkeys(r.family for r in counted):
        members = [r for r in counted if r.family == fam]
        rep.aggregates[f"worst_{fam}"] = (fam, members[0].threat, float(_all(members, rep.clean).float().mean()))
    seen = [r for r in counted if r.threat == A.SEEN]
    unseen = [r for r in counted if r.threat == A.UNSEEN]
    if seen:
        rep.aggregates["worst_seen"] = ("worst_seen", A.SEEN, float(_all(seen, rep.clean).float().mean()))
    if unseen:
        rep.aggregates["union_unseen"] = ("union_unseen", A.UNSEEN, float(_all(unseen, rep.clean).float().mean()))
        adv = [r for r in unseen if r.family != "corruption"]
        if adv:
            rep.aggregates["union_unseen_adversarial"] = ("union_unseen", A.UNSEEN,
                                                         float(_all(adv, rep.clean).float().mean()))
        corr = [r.accuracy for r in unseen if r.family == "corruption"]
        if corr:
            rep.aggregates["mean_corruption"] = ("corruption", A.UNSEEN, float(np.mean(corr)))


def masking_flags(rep: PredictorReport) -> list[str]:
    """Signs that gradients are masked or randomness unaccounted for (see the module docstring).
    Differences smaller than max(1%, 2 images) are treated as noise."""
    tol = max(0.01, 2.0 / max(rep.n, 1))
    res = {r.attack: r for r in rep.results}
    flags = []
    whitebox = [r for r in rep.results if r.threat == A.SEEN and r.gradient and not r.surrogate
                and r.family != "fgsm"]
    best_whitebox = min((r.accuracy for r in whitebox), default=math.nan)
    free = [r for r in rep.results if r.threat == A.SEEN and not r.gradient]
    if whitebox and any(r.accuracy < best_whitebox - tol for r in free):
        flags.append(FLAG_GRADIENT_FREE)
    transfer = [r for r in rep.results if r.surrogate and r.threat == A.SEEN]
    if whitebox and any(r.accuracy < best_whitebox - tol for r in transfer):
        flags.append(FLAG_TRANSFER)
    pgd = [r for r in rep.results if r.family == "pgd"]
    fgsm = [r for r in rep.results if r.family == "fgsm"]
    if pgd and fgsm and min(r.accuracy for r in fgsm) < min(r.accuracy for r in pgd) - tol:
        flags.append(FLAG_FGSM)
    if any(name.endswith("+bpda") and name[:-5] in res and r.accuracy < res[name[:-5]].accuracy - tol
           for name, r in res.items()):
        flags.append(FLAG_BPDA)
    sweep = sorted((r for r in rep.results if r.family == "eps_sweep"), key=lambda r: r.eps)
    if any(b.accuracy > a.accuracy + tol for a, b in zip(sweep, sweep[1:])):
        flags.append(FLAG_EPS)
    ce = [r.accuracy for r in whitebox if r.attack.split("+")[0] in ("pgd_ce", "apgd_ce")]
    # untargeted margin losses only: targeted APGD is stronger than CE on sound models too
    margin = [r.accuracy for r in whitebox if r.attack.split("+")[0] in ("pgd_cw", "apgd_dlr")]
    if ce and margin and min(ce) > min(margin) + max(CE_GAP, tol):
        flags.append(FLAG_CE)
    unbounded = [r for r in sweep if r.eps >= 1.0]
    if unbounded and unbounded[-1].accuracy > UNBOUNDED_MAX_ACC + tol:
        flags.append(FLAG_UNBOUNDED)
    return flags


def report_rows(rep: PredictorReport, base: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for evals.parquet (``base`` holds experiment, trial_id, method, dataset)."""
    common = {**base, "stage": "final", "epoch": -1, "n": rep.n}
    rows = [{**common, "attack": "clean", "family": "clean", "threat": "clean", "norm": "none",
             "eps": 0.0, "accuracy": rep.clean_acc, "eot_samples": rep.eot, "seconds": 0.0}]
    if rep.randomized:
        rows.append({**common, "attack": "clean_per_draw", "family": "clean", "threat": "clean",
                     "norm": "none", "eps": 0.0, "accuracy": rep.clean_per_draw, "eot_samples": rep.draws_per_call,
                     "seconds": 0.0})
    for r in rep.results:
        rows.append({**common, "attack": r.attack, "family": r.family, "threat": r.threat, "norm": r.norm,
                     "eps": r.eps, "accuracy": r.accuracy, "eot_samples": r.eot_samples,
                     "seconds": r.seconds})
    for name, (fam, threat, acc) in rep.aggregates.items():
        rows.append({**common, "attack": name, "family": fam, "threat": threat, "norm": "mixed",
                     "eps": math.nan, "accuracy": acc, "eot_samples": rep.eot, "seconds": 0.0})
    return rows


def format_table(trial_id: str, method: str, rep: PredictorReport) -> str:
    lines = [f"trial {trial_id} ({method}): n={rep.n}, "
             f"{'randomized, EOT ' + str(rep.eot) if rep.randomized else 'deterministic'}",
             f"  {'attack':26s} {'threat':7s} {'eps':>8s} {'acc':>7s} {'sec':>7s}",
             f"  {'clean':26s} {'clean':7s} {'':>8s} {rep.clean_acc:7.3f} {'':>7s}"]
    if rep.randomized:
        lines.append(f"  {'clean (single draw)':26s} {'clean':7s} {'':>8s} {rep.clean_per_draw:7.3f}")
    for r in rep.results:
        lines.append(f"  {r.attack:26s} {r.threat:7s} {r.eps:8.4g} {r.accuracy:7.3f} {r.seconds:7.1f}")
    for name, (_, threat, acc) in rep.aggregates.items():
        lines.append(f"  {name:26s} {threat:7s} {'':>8s} {acc:7.3f}")
    lines.append(f"  masking flags: {', '.join(rep.flags) if rep.flags else 'none'}")
    return "\n".join(lines)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def candidates(rows: list[dict[str, Any]]) -> list[str]:
    """Trial ids on the clean-vs-robust front of the completed trials with a checkpoint."""
    ok = [r for r in rows if r.get("status") == store.COMPLETED and r.get("checkpoint")
          and _finite(r.get("clean_acc")) and _finite(r.get("robust_acc"))]
    if not ok:
        return []
    mask = pareto.pareto_mask([[r["clean_acc"], r["robust_acc"]] for r in ok])
    return [r["trial_id"] for r, m in zip(ok, mask) if m]


def _read_experiment(exp_dir: Path) -> dict[str, Any]:
    path = exp_dir / store.EXPERIMENT
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{path} is not valid JSON ({e})") from None
    cfg = obj.get("config", obj)
    return cfg if isinstance(cfg, dict) else {}


def evaluate_experiment(exp_dir, trial_ids: Iterable[str] | None = None, subset: int | None = None,
                        eot: int | None = None, attacks: Iterable[str | A.AttackSpec] | None = None,
                        device: str | torch.device | None = None,
                        progress: Callable[[str], None] | None = None, seed: int = 0,
                        data_dir: str | None = None, front: bool = True,
                        batch_size: int = 500, threads: int | None = None,
                        runner: Callable[[list[TrialJob]], Iterable[TrialOutcome]] | None = None,
                        ) -> dict[str, Any]:
    """Run the suite on the front's trials (``front``) plus ``trial_ids``; write the results;
    return a summary: {"trials": {id: {...}}, "fronts": {attack: [ids]}, "hypervolume": {...},
    "subset", "eot", "seconds", "report": printable text}. ``threads``: torch intra-op threads
    while a trial is evaluated (restored after); 1 is much faster for small models on a busy
    CPU, where threads of one operator wait for each other.

    ``runner`` maps the trial jobs to their outcomes, in any order (default: one after the
    other in this process, with ``progress`` lines per attack). The search's driver passes one
    that runs every job as a Ray task, in parallel where the cluster has room. Results are
    written once, here, after every job has returned."""
    if threads is not None and threads < 1:
        raise EvalError(f"threads must be >= 1, got {threads}")
    t_start = time.perf_counter()
    exp_dir = Path(exp_dir)
    jobs, rows = plan(exp_dir, trial_ids, subset, eot, attacks, seed, data_dir, front, batch_size,
                      None if device is None else str(device), threads)
    if runner is None:
        outcomes = [safe_evaluate_trial(job, progress) for job in jobs]
    else:
        outcomes = list(runner(jobs))
    order = {job.trial_id: i for i, job in enumerate(jobs)}
    outcomes.sort(key=lambda o: order[o.trial_id])
    return write_results(exp_dir, rows, outcomes, jobs[0].subset_n, jobs[0].eot,
                         time.perf_counter() - t_start)


@dataclass(frozen=True)
class TrialJob:
    """Everything one trial's final evaluation needs; picklable, so it can run as a Ray task."""
    trial_id: str
    row: dict
    exp_dir: str
    dataset: str
    data_dir: str
    subset: int
    eot: int
    attacks: tuple | None
    seed: int
    batch_size: int
    device: str | None
    threads: int | None
    subset_n: int  # test images the subset holds (subset capped at the split's size)


@dataclass
class TrialOutcome:
    trial_id: str
    report: PredictorReport | None  # None: the evaluation failed (``error``)
    rows: list[dict]
    text: str
    seconds: float
    error: str = ""

    @classmethod
    def failure(cls, trial_id: str, exc: BaseException, seconds: float) -> "TrialOutcome":
        """The outcome of a trial whose evaluation raised (or whose task died): one line why."""
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return cls(trial_id, None, [], f"trial {trial_id}: final evaluation failed: {msg}", seconds, error=msg)


def plan(exp_dir: Path, trial_ids, subset, eot, attacks, seed, data_dir, front, batch_size, device,
         threads) -> tuple[list[TrialJob], list[dict]]:
    """Validate the request and list the trials to evaluate (front candidates, then extras)."""
    from raysearch import data as data_mod

    if not (exp_dir / store.TRIALS).exists():
        raise EvalError(f"{exp_dir / store.TRIALS} not found: pass --experiment <storage>/<name> of a finished search")
    exp = _read_experiment(exp_dir)
    subset = int(exp.get("final_eval_size", DEFAULT_SUBSET)) if subset is None else int(subset)
    eot = int(exp.get("eot_samples", DEFAULT_EOT)) if eot is None else int(eot)
    if subset < 1:
        raise EvalError(f"subset must be >= 1, got {subset}")
    if eot < 1:
        raise EvalError(f"eot must be >= 1, got {eot}")
    expand_attacks(attacks)  # unknown names fail here, before any work
    rows = store.read_rows(exp_dir / store.TRIALS)
    by_id = {r["trial_id"]: r for r in rows}
    ids = candidates(rows) if front else []
    for tid in trial_ids or []:
        if tid not in by_id:
            raise EvalError(f"unknown trial {tid!r}; known: {', '.join(sorted(by_id)) or 'none'}")
        if not by_id[tid].get("checkpoint"):
            raise EvalError(f"trial {tid} has no checkpoint to evaluate")
        ids.append(tid)
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise EvalError(f"no completed trial with a checkpoint in {exp_dir / store.TRIALS}")
    datasets = {by_id[t]["dataset"] for t in ids}
    if len(datasets) != 1:
        raise EvalError(f"trials span several data sets ({', '.join(sorted(datasets))}); evaluate them separately")
    dataset = datasets.pop()
    data_dir = data_dir or exp.get("data_dir", "data")
    try:
        data = data_mod.load(dataset, data_dir)
    except data_mod.DataError as e:
        raise EvalError(str(e)) from None
    for tid in ids:
        _checkpoint_folder(exp_dir, by_id[tid])
    n = min(subset, len(data.test))
    attacks = None if attacks is None else tuple(attacks)
    jobs = [TrialJob(tid, by_id[tid], str(exp_dir), dataset, data_dir, subset, eot, attacks, seed,
                     batch_size, device, threads, n) for tid in ids]
    return jobs, rows


def _checkpoint_folder(exp_dir: Path, row: dict) -> Path:
    from raysearch import trial_io

    folder = Path(row["checkpoint"])
    if not folder.is_absolute() and not folder.exists():
        folder = exp_dir / folder
    if not (folder / trial_io.META).exists():
        raise EvalError(f"trial {row['trial_id']}: checkpoint {folder} not found")
    return folder


def evaluate_trial(job: TrialJob, progress: Callable[[str], None] | None = None) -> TrialOutcome:
    """One trial's full suite: rebuild its predictor from the checkpoint, attack the test subset.
    Writes nothing; runs wherever it is called (the driver, or a Ray task with a GPU)."""
    from raysearch import data as data_mod
    from raysearch import trial_io

    t0 = time.perf_counter()
    before = torch.get_num_threads()
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    try:
        device = torch.device(job.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        data = data_mod.load(job.dataset, job.data_dir)
        spec = data.spec
        x, y = data_mod.eval_subset(data.test, job.subset, job.seed)
        x, y = x.to(device), y.to(device)
        row, tid = job.row, job.trial_id
        suite, with_defense = expand_attacks(job.attacks)
        defense, cfg, nets, pred = trial_io.rebuild(_checkpoint_folder(Path(job.exp_dir), row), spec, device)
        eps_eval = row.get("eps_eval") if _finite(row.get("eps_eval")) and row.get("eps_eval") > 0 else spec.eps_eval
        extra = defense.extra_attacks(nets, cfg) if with_defense else {}
        if progress:
            progress(f"trial {tid} ({row.get('method')}): {len(y)} test images, eps_eval {eps_eval:.4g}")
        rep = evaluate_predictor(pred, x, y, spec, eps_eval=eps_eval, attacks=suite, eot=job.eot, seed=job.seed,
                                 surrogate=nets.get("classifier"), extra=extra, batch_size=job.batch_size,
                                 progress=progress)
    finally:
        torch.set_num_threads(before)
    proxy = row.get("robust_acc")
    if _finite(proxy) and proxy > rep.accuracy("worst_seen") + PROXY_GAP:
        rep.flags.append(FLAG_PROXY)
    base = {"experiment": row.get("experiment") or Path(job.exp_dir).name, "trial_id": tid,
            "method": row.get("method"), "dataset": job.dataset}
    return TrialOutcome(tid, rep, report_rows(rep, base), format_table(tid, row.get("method", ""), rep),
                        time.perf_counter() - t0)


def safe_evaluate_trial(job: TrialJob, progress: Callable[[str], None] | None = None) -> TrialOutcome:
    """``evaluate_trial``, with a failure turned into an outcome that says why (one line), so
    one trial's failure loses no other trial's results."""
    t0 = time.perf_counter()
    try:
        return evaluate_trial(job, progress)
    except Exception as e:  # any failure of one trial's suite: report it, keep the others
        log.debug("trial %s: final evaluation failed", job.trial_id, exc_info=True)
        return TrialOutcome.failure(job.trial_id, e, time.perf_counter() - t0)


def write_results(exp_dir: Path, rows: list[dict], outcomes: list[TrialOutcome], subset_n: int, eot: int,
                  seconds: float) -> dict[str, Any]:
    """Store every successful outcome (evals.parquet rows replaced per trial, final_* columns in
    trials.parquet) and build the summary; failed trials keep their earlier results and are
    listed under "failed"."""
    reports = {o.trial_id: o.report for o in outcomes if o.report is not None}
    failed = {o.trial_id: o.error for o in outcomes if o.report is None}
    by_id = {r["trial_id"]: r for r in rows}
    old = store.read_rows(exp_dir / store.EVALS)
    kept = [r for r in old if not (r.get("stage") == "final" and r.get("trial_id") in reports)]
    store.write_evals(exp_dir, [{k: v for k, v in r.items() if k != "schema_version"} for r in kept]
                      + [r for o in outcomes for r in o.rows])
    for r in rows:
        rep = reports.get(r["trial_id"])
        if rep is not None:
            r["final_clean_acc"] = rep.clean_acc
            r["final_worst_seen"] = rep.accuracy("worst_seen")
            r["final_union_unseen"] = rep.accuracy("union_unseen")
            r["masking_flags"] = ";".join(rep.flags)
    store.write_trials(exp_dir, [{k: v for k, v in r.items() if k != "schema_version"} for r in rows])

    fronts, hv = _fronts(reports)
    texts = [o.text for o in outcomes] + ([format_fronts(fronts, hv, reports)] if reports else [])
    return {
        "trials": {tid: {"method": by_id[tid].get("method"), "clean_acc": rep.clean_acc,
                         "worst_seen": rep.accuracy("worst_seen"), "union_unseen": rep.accuracy("union_unseen"),
                         "flags": list(rep.flags),
                         "attacks": {r.attack: r.accuracy for r in rep.results},
                         "aggregates": {k: v[2] for k, v in rep.aggregates.items()}}
                   for tid, rep in reports.items()},
        "fronts": fronts, "hypervolume": hv, "subset": subset_n, "eot": eot, "failed": failed,
        "seconds": seconds, "report": "\n\n".join(texts),
    }


def _fronts(reports: dict[str, PredictorReport]) -> tuple[dict[str, list[str]], dict[str, float]]:
    """For every attack and aggregate: the trials on the (clean, accuracy) front and its
    hypervolume above (0, 0)."""
    names = list(dict.fromkeys(n for rep in reports.values()
                               for n in [r.attack for r in rep.results] + list(rep.aggregates)))
    ids = list(reports)
    fronts, hv = {}, {}
    for name in names:
        pts = np.array([[reports[t].clean_acc, reports[t].accuracy(name)] for t in ids], dtype=float)
        mask = pareto.pareto_mask(pts)
        fronts[name] = [t for t, m in zip(ids, mask) if m]
        hv[name] = pareto.hypervolume_2d(pts[mask]) if mask.any() else 0.0
    return fronts, hv


def format_fronts(fronts: dict[str, list[str]], hv: dict[str, float], reports: dict[str, PredictorReport]) -> str:
    lines = ["front (clean vs accuracy under each attack), recomputed on the test subset:"]
    for name, ids in fronts.items():
        pts = ", ".join(f"{t} ({reports[t].clean_acc:.3f}/{reports[t].accuracy(name):.3f})" for t in ids)
        lines.append(f"  {name:26s} hv {hv[name]:.3f}  {pts}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m raysearch.evaluate",
                description="Full attack suite on the Pareto candidates of a finished search.")
    p.add_argument("--experiment", required=True, help="<storage>/<name> of a finished search")
    p.add_argument("--trials", nargs="*", default=[], help="extra trial ids to evaluate")
    p.add_argument("--only-trials", action="store_true", help="skip the front; evaluate only --trials")
    p.add_argument("--subset", type=int, default=None, help="test images (default: the experiment's final_eval_size, else 1000)")
    p.add_argument("--eot", type=int, default=None, help="EOT draws for randomized predictors (default 20)")
    p.add_argument("--attacks", nargs="*", default=None,
                   help=f"attack names or groups ({', '.join(GROUPS)}); default: the default suite and the defense's attacks")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset and of the attacks")
    p.add_argument("--batch-size", type=int, default=500, help="images per attack call")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is fastest for digits-sized models on a busy machine)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.only_trials and not args.trials:
        print("error: --only-trials needs --trials", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    if args.device:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            print(f"error: --device {args.device}: {e}", file=sys.stderr)
            return 2
    try:
        summary = evaluate_experiment(args.experiment, args.trials, args.subset, args.eot, args.attacks,
                                      args.device, progress=lambda m: print(m, file=sys.stderr, flush=True),
                                      seed=args.seed, data_dir=args.data_dir, front=not args.only_trials,
                                      batch_size=args.batch_size, threads=args.threads)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary["report"])
    print(f"\n{len(summary['trials'])} trial(s), {summary['subset']} test images, {summary['seconds']:.0f} s; "
          f"results in {Path(args.experiment) / store.EVALS}")
    for tid, why in summary["failed"].items():
        print(f"error: trial {tid}: final evaluation failed: {why}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
