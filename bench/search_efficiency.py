"""How much front a search buys per device-second: hypervolume of (clean, robust) proxy accuracy
against the device-seconds spent, for each way of searching, every arm given the same budget,
over several seeds.

Arms (``--arms``):

* ``none``: the default multi-objective sampler (``--sampler``'s default), every trial trained to
  ``--epochs`` (full fidelity);
* ``moasha``: the same sampler with ``--scheduler moasha``'s decisions
  (``raysearch.search.schedulers.moasha.MOASHA``: rungs at grace · factor^k, non-dominated
  sorting with the ε-net tie-break); a stopped trial is told to Optuna as PRUNED and its slot
  goes to a new trial at once;
* ``mopbt``: ``--scheduler mopbt``'s scheduler (``raysearch.search.schedulers.mopbt.MOPBT``) over
  a population of ``--trials`` trials started from the defaults and seeded samples of the
  space: its exploit copies a real checkpoint of the parent's and the clone restarts from it with
  its own hyperparameters (``clone_state.restore_clone``), as a clone's new Train run does;
* ``random`` and the other samplers (``tpe``, ``gp``, ``nsga2``): as ``none`` with that sampler.

Every arm runs in this process without Ray (``bench/bare.py``: the worker loop's defense code,
loader, optimizers and per-epoch proxy), ``--concurrency`` trials at a time for the sampler arms
(a trial asked while others run is asked before they are told, as in a search of that many
concurrent trials), trials advanced one epoch at a time in turn. Device-seconds are the measured
seconds of each epoch's training and proxy (one worker, ``--threads`` CPU threads), plus
``--startup-s`` charged for every trial start and every clone's restart (0 by default: the
comparison is of the searching, not of Ray's start-up). The hypervolume (reference point 0, 0)
is that of the latest proxy result of every trial so far, on the ``--eval-size`` validation
images: the proxy, not the final suite, whose cost on every trial of every arm and seed is not
affordable here.

The budget of a seed is what MO-PBT's population spends training ``--trials`` trials for
``--epochs`` epochs (it runs first; ``--budget-s`` caps it), or without the ``mopbt`` arm
``--budget-s``, or ``--trials`` × ``--epochs`` epochs of the default configuration as measured
first. Printed per arm: the median hypervolume at the budget, and the device-seconds needed to
reach 95% of the full-fidelity arm's (``none``'s) hypervolume at the budget of the same seed.

    .venv/bin/python bench/search_efficiency.py --method pgd_at          # 5 seeds, none/moasha/mopbt
    .venv/bin/python bench/search_efficiency.py --seeds 1 --budget-s 60  # quick look
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import optuna  # noqa: E402
import torch  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402
from ray.tune.schedulers.pbt import _PBTTrialState  # noqa: E402

from bare import BareTrial  # noqa: E402
from raysearch import data as data_mod  # noqa: E402
from raysearch.config import ExperimentConfig, default_config  # noqa: E402
from raysearch.pareto import hypervolume_2d  # noqa: E402
from raysearch.search.schedulers import CLONE_KEY  # noqa: E402
from raysearch.search.schedulers.moasha import MOASHA  # noqa: E402
from raysearch.search.schedulers.mopbt import MOPBT, initial_configs, search_space  # noqa: E402
from raysearch.search.searcher import make_sampler  # noqa: E402

DEFAULTS = ExperimentConfig(method="pgd_at")
SAMPLER_ARMS = ("none", "random", "tpe", "gp", "nsga2")


class Spend:
    """Device-seconds spent and the hypervolume curve [(device-seconds, hypervolume)] of the
    latest result of every trial, one point after every epoch."""

    def __init__(self, budget: float, startup_s: float):
        self.budget, self.startup_s = budget, startup_s
        self.seconds, self.latest, self.curve = 0.0, {}, []
        self.trials = self.epochs = self.restarts = 0

    @property
    def spent(self) -> bool:
        return self.seconds >= self.budget

    def start(self, restart: bool = False) -> None:
        self.seconds += self.startup_s
        self.restarts += restart
        self.trials += not restart

    def epoch(self, key, metrics: dict) -> None:
        self.seconds += metrics["train_s"] + metrics["eval_s"]
        self.epochs += 1
        self.latest[key] = (metrics["clean_acc"], metrics["robust_acc"])
        self.curve.append((self.seconds, hypervolume_2d(list(self.latest.values()))))


def sampler_search(args, arm: str, seed: int, spend: Spend, moasha: bool) -> Spend:
    """A sampler arm: ``--concurrency`` trial slots; a finished (or stopped) trial is told and
    its slot asked again until the budget is spent."""
    space = search_space(args.exp)
    sampler = make_sampler(DEFAULTS.sampler if arm in ("none", "moasha") else arm, seed, args.trials)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    study.enqueue_trial({k: args.defaults[k] for k in space})  # a search's first point: the defaults
    scheduler = MOASHA(args.grace_period, args.reduction_factor, args.epochs) if moasha else None
    running: dict[int, tuple] = {}
    while not spend.spent:
        while len(running) < args.concurrency:
            t = study.ask(space)
            running[t.number] = (t, BareTrial(args.method, t.params, {}, args.epochs, args.eval_size, args.eval_steps,
                                              args.eval_eot, data=args.data))
            spend.start()
        for num, (t, trial) in list(running.items()):
            m = trial.run_epoch()
            spend.epoch(num, m)
            result = {"epoch": m["epoch"], "proxy_epoch": m["epoch"], "clean_acc": m["clean_acc"],
                      "robust_acc": m["robust_acc"]}
            if scheduler and scheduler.decide(str(num), result) == TrialScheduler.STOP:
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
                del running[num]
            elif trial.finished:
                study.tell(t, [m["clean_acc"], m["robust_acc"]])
                del running[num]
            if spend.spent:
                break
    return spend


class _Trial:
    """What MOPBT reads and changes of a Ray Tune trial (hashed by identity, as Tune's)."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.experiment_tag, self.config = trial_id, trial_id, config
        self.last_result, self.done = None, False

    def is_finished(self):
        return self.done

    def set_config(self, config):
        self.config = config

    def set_experiment_tag(self, tag):
        self.experiment_tag = tag


class _Controller:
    def pause_trial(self, trial, should_checkpoint=True):
        """Nothing to do: the paused member restarts at once (``mopbt_search``)."""


def mopbt_search(args, seed: int, spend: Spend, work: Path) -> Spend:
    """The MO-PBT arm: the population trains one epoch each in turn; each report goes to the
    scheduler, with a real checkpoint of that epoch; a member it pauses restarts at once from
    the copied parent checkpoint with its new config."""
    exp = dataclasses.replace(args.exp, storage_path=str(work), name=f"pbt{seed}", seed=seed)
    space = search_space(exp)
    scheduler = MOPBT(space, exp.exp_dir, args.perturbation_interval, args.epochs, seed)
    controller = _Controller()
    members = {}
    for i, config in enumerate(initial_configs(space, args.trials, seed, {k: args.defaults[k] for k in space})):
        t = _Trial(f"m{i}", config)
        scheduler._trial_state[t] = _PBTTrialState(t)
        members[t.trial_id] = (t, BareTrial(args.method, config, {}, args.epochs, args.eval_size, args.eval_steps,
                                            args.eval_eot, data=args.data))
        spend.start()
    while not spend.spent and not all(t.done for t, _ in members.values()):
        for key, (t, trial) in members.items():
            if t.done:
                continue
            m = trial.run_epoch()
            spend.epoch(key, m)
            folder = exp.exp_dir / "train" / key / f"epoch{m['epoch']}"
            trial.save(folder)
            t.last_result = {"epoch": m["epoch"], "proxy_epoch": m["epoch"], "clean_acc": m["clean_acc"],
                             "robust_acc": m["robust_acc"], "checkpoint_path": str(folder)}
            if scheduler.on_trial_result(controller, t, t.last_result) == TrialScheduler.NOOP:
                sampled = {k: v for k, v in t.config.items() if k != CLONE_KEY}
                clone = BareTrial(args.method, sampled, {}, args.epochs, args.eval_size, args.eval_steps,
                                  args.eval_eot, data=args.data)
                clone.start_from_clone(exp.exp_dir / t.config[CLONE_KEY]["seed"])
                members[key] = (t, clone)
                spend.start(restart=True)
            t.done = members[key][1].finished
            if spend.spent:
                break
    shutil.rmtree(exp.exp_dir, ignore_errors=True)
    return spend


def hv_at(curve, seconds: float) -> float:
    return max((h for s, h in curve if s <= seconds + 1e-9), default=0.0)


def seconds_to_reach(curve, hv: float) -> float | None:
    return next((s for s, h in curve if h >= hv - 1e-12), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="pgd_at")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--arms", default="none,moasha,mopbt",
                   help="comma-separated: none, moasha, mopbt, random, tpe, gp, nsga2 (default none,moasha,mopbt)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of a trial (--max-epochs; default 6)")
    p.add_argument("--trials", type=int, default=8,
                   help="MO-PBT's population, and the budget in full-fidelity trials without mopbt or --budget-s "
                        "(default 8)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="device-seconds per arm and seed at most (default: what MO-PBT spends; without it, "
                        "--trials × --epochs × the seconds of one epoch of the default configuration)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time in the sampler arms (default 2)")
    p.add_argument("--eval-size", type=int, default=DEFAULTS.eval_size)
    p.add_argument("--eval-steps", type=int, default=DEFAULTS.eval_steps)
    p.add_argument("--eval-eot", type=int, default=DEFAULTS.eval_eot)
    p.add_argument("--grace-period", type=int, default=DEFAULTS.grace_period)
    p.add_argument("--reduction-factor", type=float, default=DEFAULTS.reduction_factor)
    p.add_argument("--perturbation-interval", type=int, default=DEFAULTS.perturbation_interval)
    p.add_argument("--startup-s", type=float, default=0.0, help="device-seconds charged per trial start and clone restart")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - {*SAMPLER_ARMS, "moasha", "mopbt"})
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.data = data_mod.load(args.dataset)
    args.exp = dataclasses.replace(DEFAULTS, method=args.method, dataset=args.dataset, max_epochs=args.epochs)
    args.defaults = dataclasses.asdict(default_config(args.method, args.data.spec))
    if args.budget_s is None and "mopbt" not in arms:
        warm = BareTrial(args.method, {}, {}, args.epochs, args.eval_size, args.eval_steps, args.eval_eot,
                         data=args.data)
        warm.run_epoch()
        m = warm.run_epoch()
        args.budget_s = args.trials * args.epochs * (m["train_s"] + m["eval_s"])
        print(f"one epoch of the default configuration: {m['train_s'] + m['eval_s']:.2f} s", flush=True)
    budget = (f"{args.budget_s:.0f} device-s" if args.budget_s else "what MO-PBT's population spends") + \
        " per arm and seed"
    print(f"search_efficiency: {args.method} on {args.dataset}, {args.epochs} epochs/trial, budget {budget}, arms "
          f"{', '.join(arms)} (sampler {DEFAULTS.sampler}, {args.concurrency} trials at a time; MO-ASHA grace "
          f"{args.grace_period}, factor {args.reduction_factor:g}; MO-PBT population {args.trials}, interval "
          f"{args.perturbation_interval}), proxy on {args.eval_size} validation images (PGD-{args.eval_steps}, EOT "
          f"{args.eval_eot}), seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    table = []
    with tempfile.TemporaryDirectory() as work:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row, budget = {}, args.budget_s or float("inf")
            # MO-PBT first: its population's epochs set the seed's budget for the others (unless
            # --budget-s is smaller); arms in turn within a seed, so the machine's drift falls on all
            for arm in sorted(arms, key=lambda a: a != "mopbt"):
                t0, spend = time.time(), Spend(budget, args.startup_s)
                if arm == "mopbt":
                    mopbt_search(args, seed, spend, Path(work))
                    budget = min(budget, spend.seconds)
                else:
                    sampler_search(args, arm, seed, spend, moasha=arm == "moasha")
                row[arm] = spend
                print(f"seed {seed} {arm}: hypervolume {hv_at(spend.curve, budget):.4f} at "
                      f"{min(spend.seconds, budget):.0f} device-s ({spend.trials} trials, {spend.epochs} "
                      f"trial-epochs" + (f", {spend.restarts} clones" if arm == "mopbt" else "")
                      + f"; {time.time() - t0:.0f} s wall, load {os.getloadavg()[0]:.1f})", flush=True)
            table.append((budget, row))

    print(f"\n{args.method}: hypervolume of the proxy front at each seed's budget (device-s: "
          f"{', '.join(f'{b:.0f}' for b, _ in table)}), and the device-seconds to reach 95% of the full-fidelity "
          f"arm's (none) hypervolume at that budget, over {len(table)} seeds")
    print("| arm | median HV at budget | HV per seed | device-s to 95% of none's HV (median of seeds reaching it) "
          "| seeds reaching it | trials (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arm in arms:
        hvs = [hv_at(r[arm].curve, b) for b, r in table]
        if "none" in arms:
            reach = [seconds_to_reach(r[arm].curve, 0.95 * hv_at(r["none"].curve, b)) for b, r in table]
            got = [s for s in reach if s is not None]
            to95 = f"{statistics.median(got):.0f}" if got else "never"
            reached = f"{len(got)}/{len(table)}"
        else:
            to95 = reached = "n/a (no none arm)"
        print(f"| {arm} | {statistics.median(hvs):.4f} | {' '.join(f'{h:.4f}' for h in hvs)} | {to95} | {reached} | "
              f"{statistics.median(r[arm].trials for _, r in table):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
