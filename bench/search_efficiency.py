"""How much front a search buys per trial: hypervolume of (clean, robust) accuracy reached by the
default multi-objective sampler (``--sampler``'s default) after N trials, against random
search with N and 2N trials, and the trial-epochs ASHA early stopping saves, over several seeds.

The objective is in-process and faithful to a real search, without Ray's start-up: the same
defense code, loader and per-epoch proxy evaluation as the worker loop (``bench/ray_overhead.py``'s
``bare_trial``), the method's real search space and default start point, trials asked
``--concurrency`` at a time before any is told (as two concurrent Tune trials are), and for ASHA
Ray Tune's own bracket (``ray.tune.schedulers.async_hyperband._Bracket``) on clean×robust
accuracy each epoch, with the running trials advanced epoch by epoch together. A stopped trial is
told to Optuna with its last epoch's values, as a search does.

    .venv/bin/python bench/search_efficiency.py                       # pgd_at, N=12, 4 epochs, 3 seeds
    .venv/bin/python bench/search_efficiency.py --trials 6 --seeds 1  # quick look
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import optuna  # noqa: E402
import torch  # noqa: E402
from ray.tune.schedulers.async_hyperband import _Bracket  # noqa: E402

import search_spaces  # noqa: E402
from ray_overhead import bare_trial  # noqa: E402
from raysearch import data as data_mod  # noqa: E402
from raysearch.config import ExperimentConfig, default_config  # noqa: E402
from raysearch.search.searcher import make_sampler  # noqa: E402
from raysearch.pareto import hypervolume_2d  # noqa: E402

DEFAULT = ExperimentConfig.__dataclass_fields__["sampler"].default  # what --sampler defaults to


@dataclasses.dataclass
class _Id:
    trial_id: str


def search(args, sampler: optuna.samplers.BaseSampler, n_trials: int, asha: bool) -> list[tuple[int, float]]:
    """Run one search; returns [(trial-epochs spent so far, hypervolume so far)] after each trial."""
    spec = data_mod.describe(args.dataset)
    space = search_spaces.to_optuna(search_spaces.load(args.method), spec.eps_scale)
    defaults = dataclasses.asdict(default_config(args.method, spec))
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    study.enqueue_trial({k: defaults[k] for k in space})  # a search's points_to_evaluate
    bracket = _Bracket(args.grace_period, args.epochs, args.reduction_factor, 0, stop_last_trials=False)
    points, curve, spent, asked = [], [], 0, 0
    while asked < n_trials:
        batch = [study.ask(space) for _ in range(min(args.concurrency, n_trials - asked))]
        asked += len(batch)
        running = {t.number: (t, bare_trial(args.method, t.params, {}, args.epochs, args.eval_size,
                                            args.eval_steps, dataset=args.dataset)) for t in batch}
        last: dict[int, dict] = {}
        for epoch in range(1, args.epochs + 1):
            for num, (t, gen) in list(running.items()):
                m = next(gen)
                spent += 1
                last[num] = m
                if asha and bracket.on_result(_Id(str(num)), epoch, m["clean_acc"] * m["robust_acc"]) == "STOP":
                    del running[num]
        for t in batch:
            m = last[t.number]
            study.tell(t, [m["clean_acc"], m["robust_acc"]])
            points.append((m["clean_acc"], m["robust_acc"]))
            curve.append((spent, hypervolume_2d(points)))
    return curve


def hv_at(curve, n: int) -> float:
    return curve[min(n, len(curve)) - 1][1]


def epochs_to_reach(curve, hv: float) -> int | None:
    return next((e for e, h in curve if h >= hv - 1e-12), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="pgd_at")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--trials", type=int, default=12, help="N: the default sampler's budget (default 12)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    p.add_argument("--concurrency", type=int, default=2, help="trials asked before any is told (default 2)")
    p.add_argument("--eval-size", type=int, default=180)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", default="random,tpe,asha",
                   help="comma-separated, besides the default sampler: random (N and 2N trials), tpe, gp, nsga2 "
                        "(the other --sampler choices, N trials), asha (default sampler + ASHA, 2N trials)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = args.trials
    arms = [a for a in args.arms.split(",") if a and a != DEFAULT]
    print(f"search_efficiency: {args.method} on {args.dataset}, N={n}, {args.epochs} epochs/trial, "
          f"{args.concurrency} asked at a time, default sampler {DEFAULT}, seeds {args.first_seed}.."
          f"{args.first_seed + args.seeds - 1}; load average {os.getloadavg()[0]:.1f}", flush=True)
    table = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t0 = time.time()
        default = search(args, make_sampler(DEFAULT, seed, n), n, asha=False)
        row = {"seed": seed, "default_N": hv_at(default, n)}
        if "random" in arms:
            rnd = search(args, optuna.samplers.RandomSampler(seed=seed), 2 * n, asha=False)
            row.update(random_N=hv_at(rnd, n), random_2N=hv_at(rnd, 2 * n))
        for name in ("tpe", "gp", "nsga2"):
            if name in arms:
                row[f"{name}_N"] = hv_at(search(args, make_sampler(name, seed, n), n, asha=False), n)
        if "asha" in arms:
            asha = search(args, make_sampler(DEFAULT, seed, 2 * n), 2 * n, asha=True)
            row.update(asha_N=hv_at(asha, n), asha_epochs_N=asha[min(n, len(asha)) - 1][0],
                       asha_epochs_to_default=epochs_to_reach(asha, row["default_N"]), asha_2N=hv_at(asha, 2 * n),
                       asha_epochs_2N=asha[-1][0])
        table.append(row)
        print(f"seed {seed} ({time.time() - t0:.0f}s): " + "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "seed"), flush=True)

    def med(key):
        vals = [r[key] for r in table if r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    def versus(key, other):
        diffs = [r[key] - r[other] for r in table]
        return (f"{sum(d > 0 for d in diffs)}/{len(diffs)} seeds, mean {statistics.mean(diffs):+.4f}, "
                f"median {statistics.median(diffs):+.4f}")

    print(f"\nhypervolume after N={n} trials (median over {len(table)} seeds): default ({DEFAULT}) {med('default_N'):.4f}")
    if "random" in arms:
        print(f"  random {med('random_N'):.4f}; default beats it in {versus('default_N', 'random_N')}")
        print(f"  random with 2N={2 * n}: {med('random_2N'):.4f}; default beats it in {versus('default_N', 'random_2N')}")
    for name in ("tpe", "gp", "nsga2"):
        if name in arms:
            print(f"  {name} {med(name + '_N'):.4f}; default beats it in {versus('default_N', name + '_N')}")
    if "asha" in arms:
        reached = [r["asha_epochs_to_default"] for r in table if r["asha_epochs_to_default"] is not None]
        print(f"ASHA (grace {args.grace_period}, reduction {args.reduction_factor:g}): N trials cost "
              f"{med('asha_epochs_N'):.0f} trial-epochs vs {n * args.epochs} without, hypervolume {med('asha_N'):.4f}; "
              f"reached the no-ASHA N-trial hypervolume in {len(reached)}/{len(table)} seeds"
              + (f", after {statistics.median(reached):.0f} trial-epochs (saving {n * args.epochs - statistics.median(reached):.0f})"
                 if reached else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
