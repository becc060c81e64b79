"""Shared pieces of the dashboard tests (tests/test_dashboard_*.py): results folders written
through raysearch.store as a search and its final evaluation write them: several methods, hp_*
columns, per-epoch and final rows, a failed and a running trial, and (``curve``) the robustness
curve's rows at further radii. Every accuracy has its n (the store derives its interval)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from raysearch import store
from raysearch.pareto import pareto_mask
from raysearch.schema import FINAL_EPOCH, Stage, Status, Threat, curve_attack

# the final suite as raysearch.evaluate writes it: single attacks, per-family worst cases
# ("worst_<family>"), worst_seen, union_unseen (the unseen adversarial attacks: no corruptions),
# the corruptions' union and mean apart (aggregates: norm "mixed"), ε-sweep checks
SEEN = [("fgsm", "fgsm", "linf"), ("pgd_ce", "pgd", "linf"), ("pgd_cw", "pgd", "linf"), ("apgd_ce", "apgd", "linf"),
        ("apgd_dlr", "apgd", "linf"), ("square", "square", "linf")]
UNSEEN = [("pgd_l2", "pgd_l2", "l2"), ("stadv", "stadv", "flow"), ("recolor", "recolor", "colour"),
          ("jpeg", "jpeg", "dct"), ("gaussian_noise_s3", "corruption", "none"), ("blur_s3", "corruption", "none")]
CHECKS = [("pgd_eps_x0.5", 0.9), ("pgd_eps_x2", 0.3), ("pgd_unbounded", 0.0)]
PROXY_N, FINAL_N = 200, 1000  # images of the per-epoch proxy and of the final suite
HP = {"pgd_at": {"eps_train": (0.05, 0.3), "attack_steps": (3, 10), "lr": (0.01, 0.2)},
      "trades": {"eps_train": (0.05, 0.3), "beta": (0.5, 12.0), "lr": (0.01, 0.2)},
      "standard": {"lr": (0.005, 0.2), "weight_decay": (1e-5, 1e-3)}}


def write_experiment(root: Path, method: str, n: int = 6, seed: int = 0, final: bool = True,
                     failed: bool = True, running: bool = False, name: str | None = None,
                     t0: float = 1.7e9, curve: tuple[float, ...] = (), scheduler: str = "none",
                     checks: dict[str, dict] | None = None, lineage: dict[str, list[dict]] | None = None) -> Path:
    """One experiment folder as a search writes it: trials with a clean/robust trade-off driven
    by eps_train, per-epoch proxy rows, and the final suite on the trials of the front (with
    ``curve``: also its seen attacks at those radii, as ``--eps-list`` writes them; ε_eval is
    0.2). The random draws do not depend on ``curve``, so the rest is the same with or without.
    ``scheduler`` goes into experiment.json's config and every trial's row; ``checks``: the
    ``masking_checks`` of every evaluated trial (what fired also in ``masking_flags``);
    ``lineage``: trial id -> its clone events (``lineage_json``, ``parent_trial_id`` and
    ``cloned_at_epoch`` from the last)."""
    rng = np.random.default_rng(seed)
    name = name or f"{method}-digits"
    exp_dir = root / name
    space = HP[method]
    trials, evals = [], []
    epochs = 3
    for i in range(n):
        hp = {}
        for k, (lo, hi) in space.items():
            hp[f"hp_{k}"] = int(rng.integers(lo, hi + 1)) if isinstance(lo, int) else float(rng.uniform(lo, hi))
        strength = hp.get("hp_eps_train", 0.0) / 0.3 if method != "standard" else 0.0
        clean = float(np.clip(0.99 - 0.25 * strength - rng.uniform(0, 0.05), 0, 1))
        robust = float(np.clip(0.05 + 0.6 * strength - rng.uniform(0, 0.08), 0, 1))
        status = Status.COMPLETED
        if failed and i == n - 1:
            status = Status.FAILED
        if running and i == n - 2:
            status = Status.RUNNING
        tid = f"{method[:4]}_{i:05d}"
        row = {"experiment": name, "trial_id": tid, "method": method, "dataset": "digits", "arch": "small_cnn",
               "status": status, "error": "RuntimeError: loss is NaN" if status == Status.FAILED else "",
               "clean_acc": clean if status == Status.COMPLETED else None,
               "robust_acc": robust if status == Status.COMPLETED else None,
               "eval_n": PROXY_N if status == Status.COMPLETED else None,
               "eps_eval": 0.2, "epochs": epochs if status == Status.COMPLETED else 1,
               "wall_s": 10.0 + i, "device_s": 10.0 + i, "num_workers": 1, "nodes": "127.0.0.1",
               "started_at": t0 + 20 * i, "finished_at": t0 + 20 * i + 15 if status != Status.RUNNING else None,
               "scheduler": scheduler, **hp}
        events = (lineage or {}).get(tid, [])
        row.update(lineage_json=json.dumps(events), parent_trial_id=events[-1]["parent"] if events else "",
                   cloned_at_epoch=events[-1]["epoch"] if events else 0)
        trials.append(row)
        last = epochs if status != Status.FAILED else 1
        for ep in range(1, last + 1):
            frac = ep / epochs
            for attack, threat, acc in (("clean", Threat.CLEAN, clean * (0.8 + 0.2 * frac)),
                                        ("pgd20_linf", Threat.SEEN, robust * (0.7 + 0.3 * frac))):
                evals.append({"experiment": name, "trial_id": tid, "method": method, "dataset": "digits",
                              "stage": Stage.TRIAL, "epoch": ep, "attack": attack, "family": attack.split("20")[0],
                              "threat": threat, "norm": "linf" if threat == Threat.SEEN else "none",
                              "eps": 0.2 if threat == Threat.SEEN else None, "accuracy": acc, "n": PROXY_N,
                              "eot_samples": 1, "seconds": 0.5})
    if final:
        done = [t for t in trials if t["status"] == Status.COMPLETED]
        mask = pareto_mask([[t["clean_acc"], t["robust_acc"]] for t in done])
        for t, on in zip(done, mask):
            if not on:
                continue
            base = {"experiment": name, "trial_id": t["trial_id"], "method": method, "dataset": "digits",
                    "stage": Stage.FINAL, "epoch": FINAL_EPOCH, "n": FINAL_N, "eot_samples": 1, "seconds": 2.0}
            evals.append({**base, "attack": "clean", "family": "clean", "threat": Threat.CLEAN, "norm": "none",
                          "eps": None, "accuracy": t["clean_acc"] - 0.005})
            accs = {}
            for j, (attack, fam, norm) in enumerate(SEEN):
                accs[attack] = (Threat.SEEN, fam, max(0.0, t["robust_acc"] - 0.01 * j))
            for j, (attack, fam, norm) in enumerate(UNSEEN):  # the corruptions lowest: apart from the union
                acc = 0.6 * t["robust_acc"] + 0.02 * j if fam != "corruption" else \
                    0.5 * t["robust_acc"] + 0.06 - 0.01 * j
                accs[attack] = (Threat.UNSEEN, fam, max(0.0, acc))
            norms = dict((a, n) for a, _, n in SEEN + UNSEEN)
            for attack, (threat, fam, acc) in accs.items():
                evals.append({**base, "attack": attack, "family": fam, "threat": threat, "norm": norms[attack],
                              "eps": 0.2 if threat == Threat.SEEN else None, "accuracy": acc})
            for attack, factor in CHECKS:
                evals.append({**base, "attack": attack, "family": "eps_sweep", "threat": Threat.CHECK, "norm": "linf",
                              "eps": 0.2, "accuracy": t["robust_acc"] * factor})
            # per-image worst cases lie a little below the worst single attack
            aggregates = {f"worst_{fam}": (fam, threat, min(a for th, f, a in accs.values() if f == fam) - 0.003)
                          for threat, fam, _ in accs.values() if fam != "corruption"}
            aggregates["worst_seen"] = ("worst_seen", Threat.SEEN, min(a for th, _, a in accs.values() if th == Threat.SEEN) - 0.005)
            aggregates["union_unseen"] = ("union_unseen", Threat.UNSEEN, min(
                a for th, f, a in accs.values() if th == Threat.UNSEEN and f != "corruption") - 0.01)
            corruptions = [a for _, f, a in accs.values() if f == "corruption"]
            aggregates["union_corruptions"] = ("corruption", Threat.UNSEEN, min(corruptions) - 0.003)
            aggregates["mean_corruption"] = ("corruption", Threat.UNSEEN, float(np.mean(corruptions)))
            for attack, (fam, threat, acc) in aggregates.items():
                evals.append({**base, "attack": attack, "family": fam, "threat": threat, "norm": "mixed",
                              "eps": None, "accuracy": max(0.0, acc)})
            for radius in curve:
                evals.extend(curve_rows(base, accs, radius))
            t["final_clean_acc"] = t["clean_acc"] - 0.005
            t["final_worst_seen"] = max(0.0, aggregates["worst_seen"][2])
            t["final_union_unseen"] = max(0.0, aggregates["union_unseen"][2])
            t["final_n"] = FINAL_N
            t["masking_checks"] = json.dumps(checks or {})
            t["masking_flags"] = ";".join(c for c, v in (checks or {}).items() if v["fired"])
    store.write_trials(exp_dir, trials)
    store.write_evals(exp_dir, evals)
    store.write_json(exp_dir / store.EXPERIMENT, {
        "config": {"method": method, "dataset": "digits", "num_samples": n, "max_epochs": epochs, "eps_eval": 0.2,
                   "scheduler": scheduler},
        "search_space": {k: {"type": "int" if isinstance(lo, int) else "float", "low": lo, "high": hi,
                             "log": k in ("lr", "weight_decay", "beta")} for k, (lo, hi) in space.items()},
        "objectives": ["clean_acc", "robust_acc"], "git_revision": "0" * 40, "versions": {"torch": "2"}})
    return exp_dir


def curve_accuracy(at_eps_eval: float, radius: float) -> float:
    """A seen attack's accuracy at ``radius`` given its accuracy at ε_eval = 0.2: falling with ε."""
    return float(np.clip(at_eps_eval * (1.5 - 2.5 * radius), 0.0, 1.0))


def curve_rows(base: dict, accs: dict, radius: float) -> list[dict]:
    """One trial's curve rows at ``radius``: each seen attack, then their worst case."""
    rows = []
    seen = {a: (fam, acc) for a, (threat, fam, acc) in accs.items() if threat == Threat.SEEN}
    for attack, (fam, acc) in seen.items():
        rows.append({**base, "attack": curve_attack(attack, radius), "family": fam, "threat": Threat.SEEN,
                     "norm": "linf", "eps": radius, "accuracy": curve_accuracy(acc, radius)})
    worst = max(0.0, min(curve_accuracy(acc, radius) for _, acc in seen.values()) - 0.005)
    rows.append({**base, "attack": curve_attack("worst_seen", radius), "family": "worst_seen", "threat": Threat.SEEN,
                 "norm": "mixed", "eps": radius, "accuracy": worst})
    return rows


def write_results(root: Path, final: bool = True, curve: tuple[float, ...] = ()) -> Path:
    """A results root with two methods (plus the component cache folder and an unrelated one);
    ``curve``: the final evaluation's robustness curve at those radii."""
    write_experiment(root, "pgd_at", n=7, seed=1, final=final, running=True, curve=curve)
    write_experiment(root, "standard", n=4, seed=2, final=final, t0=1.7e9 + 5, curve=curve)
    (root / ".components" / "flow-abc").mkdir(parents=True)
    (root / ".components" / "flow-abc" / store.TRIALS).write_bytes(b"not ours")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an experiment")
    return root
