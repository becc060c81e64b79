"""``python -m raysearch.tune --method M``: a multi-objective hyperparameter search of one defense.

Every trial is a Ray Train run of torch DDP workers (CPU or GPU; ``raysearch.ddp``) driven by a Ray Tune
function trainable; Ray Tune's ``OptunaSearch`` samples the method's search space, maximizing
clean accuracy and seen-attack (L∞ PGD) robust accuracy. Results go to
``<storage-path>/<name>/{trials,evals}.parquet`` and ``experiment.json``; at the end the Pareto
front and its hypervolume are printed, with the command that opens the dashboard.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from raysearch import data as data_mod, perf
from raysearch.attacks.memory import MemorySizeError, check_memory
from raysearch.config import ConfigError, ExperimentConfig, default_config, parse_set
from raysearch.evaluate import candidates, proxy
from raysearch.evaluate.suite import EvalError, check_radii
from raysearch.search.schedulers import SCHEDULERS
from trainables import REGISTRY
from trainables.nets import ARCHS

SAMPLERS = ("tpe", "nsga2", "gp", "random")
# final test images of a randomized defense by default: ±6.9 points at an accuracy of 0.5 (100
# images: ±9.6), about 19 minutes per candidate for atop on digits on one core
RANDOMIZED_FINAL_SIZE = 200
log = logging.getLogger("raysearch")


# ---------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, not argparse's usage block
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m raysearch.tune",
        description="Search a defense's hyperparameters for the clean vs robust accuracy Pareto front.")
    p.add_argument("--method", required=True, help=f"defense to search: {', '.join(REGISTRY)}")
    p.add_argument("--dataset", default="digits",
                   help=f"{', '.join(data_mod.DATASETS)} (default digits, bundled), or your own: folder:PATH (train/ "
                        "and test/, one sub-folder of images per class) or npz:PATH (x_train, y_train, x_test, "
                        "y_test); your own data needs --eps-eval")
    p.add_argument("--data-dir", default="data", help="folder holding CIFAR/SVHN/MNIST files (default ./data)")
    p.add_argument("--download", action="store_true", help="download CIFAR/SVHN/MNIST into --data-dir if absent")
    p.add_argument("--arch", default="auto", help=f"classifier: auto, {', '.join(ARCHS)}, or module:function, a "
                                                  "factory of your own (auto: small_cnn for images up to 28 px or "
                                                  "with one channel, preact18 otherwise)")
    p.add_argument("--sampler", default="gp", help=f"Optuna sampler: {', '.join(SAMPLERS)} (default gp)")
    p.add_argument("--num-samples", type=int, default=12, help="trials to run (default 12)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--max-epochs", type=int, default=8, help="training epochs per trial (default 8)")
    p.add_argument("--storage-path", default="ray_results", help="results root (default ./ray_results); must "
                                                                "be reachable from every node on a cluster")
    p.add_argument("--name", default="", help="experiment name (default <method>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name after a crash or kill")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config field for every trial (repeatable; value parsed as a Python literal)")
    p.add_argument("--eps-eval", type=float, default=None,
                   help="L∞ radius of the seen attack on [0,1] (default 8/255 on CIFAR/SVHN, 0.3 on MNIST, "
                        "0.2 on digits; required for folder: and npz: data)")
    p.add_argument("--eps-list", type=float, nargs="+", action="extend", default=[], metavar="EPS",
                   help="L∞ radii on [0,1] at which the final evaluation also runs the seen attacks, for "
                        "accuracy-vs-eps curves (space-separated or repeated; default none); each radius "
                        "is one more run of the seen suite, most of the final evaluation's time")
    p.add_argument("--workers-per-trial", type=int, default=1, help="DDP workers per trial (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker reserves (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker reserves (default 0)")
    p.add_argument("--address", default="", help="existing Ray cluster (e.g. auto or host:6379); default: "
                                                 "start a local Ray bound to 127.0.0.1")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: what the cluster fits)")
    p.add_argument("--max-failures", type=int, default=1, help="worker-group restarts per trial from its last "
                                                               "checkpoint (default 1)")
    p.add_argument("--eval-size", type=int, default=500, help="validation images for the per-epoch proxy")
    p.add_argument("--eval-steps", type=int, default=20, help="gradient steps of each attack run of the per-epoch "
                                                              "proxy (default 20)")
    p.add_argument("--eval-eot", type=int, default=2, help="EOT draws per gradient (and scoring calls) of the "
                                                           "per-epoch proxy for randomized predictors (default 2)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="run the per-epoch proxy every N epochs and after the last one; the epochs between "
                        "report the last measured values (default: 1 with a --scheduler; otherwise "
                        "ceil(epochs/3), or only after the last epoch for a randomized defense such as atop)")
    p.add_argument("--eot-samples", type=int, default=20, help="EOT samples in the final evaluation (default 20)")
    p.add_argument("--eval-memory", default="", metavar="SIZE",
                   help="memory the attacks of the proxy and the final suite may use, e.g. 2GB or 512MB (default: "
                        "80%% of the GPU's free memory; a quarter of the available RAM on CPU)")
    p.add_argument("--final-eval-size", type=int, default=0,
                   help=f"test images for the final suite (default: 1000, or {RANDOMIZED_FINAL_SIZE} for a "
                        "randomized defense such as atop, whose attacks average 20 draws per step; 360 = the "
                        "whole digits test set)")
    p.add_argument("--final-candidates", default=None, metavar="front|band|all|K",
                   help=f"trials the final suite attacks: front (the proxy front; the default for a randomized "
                        f"defense such as atop), band (the default otherwise: the front and every trial within "
                        f"{candidates.BAND_WIDTH:g} of it in both clean and robust accuracy), all, or K (the K best "
                        "by non-dominated sorting)")
    p.add_argument("--no-final-eval", action="store_true", help="skip the attack suite after the search")
    p.add_argument("--scheduler", default="none",
                   help=f"{', '.join(SCHEDULERS)} (default none): moasha stops trials early by Pareto ranking "
                        "of clean and robust accuracy at each rung (stopped trials keep their last metrics and "
                        "reach Optuna as pruned); mopbt evolves a population of --num-samples trials by "
                        "population-based training with Pareto ranking, without Optuna")
    p.add_argument("--grace-period", type=int, default=1,
                   help="moasha: epochs before a trial can be stopped (default 1)")
    p.add_argument("--reduction-factor", type=float, default=3.0,
                   help="moasha: keep 1/F of the trials at each rung (default 3)")
    p.add_argument("--perturbation-interval", type=int, default=2,
                   help="mopbt: epochs between two rankings of a trial, each a chance to clone a better one "
                        "(default 2)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training forwards (evaluation stays fp32)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for trained nets and batches")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained networks (pays off on long runs)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="DataLoader worker processes per training worker (persistent; pinned memory on CUDA)")
    p.add_argument("--data-on-device", default="auto",
                   help="hold the training split on the device: auto (on for digits on GPU), on, off")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    return p


class UsageError(Exception):
    pass


def make_config(args: argparse.Namespace) -> ExperimentConfig:
    """Validate everything that can be checked before Ray starts."""
    if args.method not in REGISTRY:
        raise UsageError(f"unknown method {args.method!r}; known: {', '.join(REGISTRY)}")
    dataset = data_mod.canonical(args.dataset)
    if args.arch != "auto" and ":" not in args.arch and args.arch not in ARCHS:
        raise UsageError(f"unknown architecture {args.arch!r}; known: auto, {', '.join(ARCHS)}")
    if args.sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {args.sampler!r}; known: {', '.join(SAMPLERS)}")
    for flag, value, low in [("--num-samples", args.num_samples, 1), ("--max-epochs", args.max_epochs, 1),
                             ("--workers-per-trial", args.workers_per_trial, 1), ("--eval-size", args.eval_size, 1),
                             ("--eval-steps", args.eval_steps, 1), ("--eval-eot", args.eval_eot, 1),
                             ("--eval-every", args.eval_every, 0),
                             ("--eot-samples", args.eot_samples, 1), ("--max-failures", args.max_failures, 0),
                             ("--max-concurrent", args.max_concurrent, 0), ("--final-eval-size", args.final_eval_size, 0)]:
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if args.scheduler not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {args.scheduler!r}; known: {', '.join(SCHEDULERS)}")
    if args.grace_period < 1 or args.grace_period > args.max_epochs:
        raise UsageError(f"--grace-period must be between 1 and --max-epochs ({args.max_epochs}), got {args.grace_period}")
    if args.reduction_factor <= 1:
        raise UsageError(f"--reduction-factor must be above 1, got {args.reduction_factor}")
    if args.perturbation_interval < 1 or args.perturbation_interval >= args.max_epochs and args.scheduler == "mopbt":
        raise UsageError(f"--perturbation-interval must be at least 1 and below --max-epochs ({args.max_epochs}) "
                         f"for mopbt, got {args.perturbation_interval}")
    if args.scheduler == "mopbt" and args.num_samples < 2:
        raise UsageError(f"--scheduler mopbt needs a population: --num-samples at least 2, got {args.num_samples}")
    if args.loader_workers < 0:
        raise UsageError(f"--loader-workers must be at least 0, got {args.loader_workers}")
    if args.data_on_device not in perf.DATA_ON_DEVICE:
        raise UsageError(f"--data-on-device must be one of {', '.join(perf.DATA_ON_DEVICE)}, got {args.data_on_device!r}")
    try:
        eval_memory = check_memory(args.eval_memory)
    except MemorySizeError as e:
        raise UsageError(str(e)) from None
    if args.eps_eval is not None and not (0 < args.eps_eval <= 1):
        raise UsageError(f"--eps-eval must be in (0, 1] on the [0,1] pixel scale, got {args.eps_eval}")
    try:
        eps_list = check_radii(args.eps_list)  # the final evaluation's own rule, checked before any work
    except EvalError as e:
        raise UsageError(str(e)) from None
    try:
        final_candidates = candidates.parse_rule(args.final_candidates
                                                 or candidates.default_rule(REGISTRY[args.method].randomized))
    except candidates.CandidatesError as e:
        raise UsageError(str(e)) from None
    if args.cpus_per_worker < 0 or args.gpus_per_worker < 0:
        raise UsageError("--cpus-per-worker and --gpus-per-worker must not be negative")
    if args.gpus_per_worker > 1 and args.gpus_per_worker != int(args.gpus_per_worker):
        raise UsageError("--gpus-per-worker above 1 must be a whole number")
    if args.workers_per_trial > 1 and 0 < args.gpus_per_worker < 1:
        raise UsageError("several DDP workers cannot share one GPU (NCCL); use --gpus-per-worker 1")
    try:
        sets = parse_set(args.sets, args.method)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    data_dir = str(Path(args.data_dir).expanduser().resolve())
    spec = data_mod.describe(dataset, data_dir, args.eps_eval)  # a user's data set: read and checked here
    arch = args.arch
    if ":" in arch:
        from trainables.user_arch import ArchError, canonical_arch, check_arch

        try:
            arch = canonical_arch(arch)
            check_arch(arch, spec, args.method)
        except ArchError as e:
            raise UsageError(str(e)) from None
    defaults = default_config(args.method, spec)
    for key, value in sets:
        fld = {f.name: f for f in dataclasses.fields(defaults)}[key]
        if fld.metadata.get("eps") and isinstance(value, (int, float)) and value < 0:
            raise UsageError(f"--set {key}={value}: a budget must not be negative")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in ("epochs", "batch_size") and value < 1:
            raise UsageError(f"--set {key}={value}: must be at least 1")
    storage = Path(args.storage_path).expanduser().resolve()
    name = args.name or f"{args.method}-{data_mod.slug(dataset)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name.startswith("."):
        raise UsageError(f"--name {name!r}: use a plain folder name")
    exp_dir = storage / name
    if exp_dir.exists() and not args.resume:
        raise UsageError(f"experiment {exp_dir} exists; pass --resume to continue it or choose another --name")
    if args.resume and not (exp_dir / "experiment.json").exists():
        raise UsageError(f"--resume: no experiment at {exp_dir}")
    return ExperimentConfig(
        method=args.method, dataset=dataset, data_dir=data_dir,
        download=args.download, arch=arch, sampler=args.sampler, num_samples=args.num_samples,
        seed=args.seed, max_epochs=args.max_epochs, storage_path=str(storage), name=name, resume=args.resume,
        sets=sets, eps_eval=args.eps_eval or spec.eps_eval, eps_list=eps_list,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, address=args.address,
        eval_size=args.eval_size, eval_steps=args.eval_steps, eot_samples=args.eot_samples,
        final_candidates=final_candidates,
        final_eval=not args.no_final_eval, final_eval_size=args.final_eval_size or (RANDOMIZED_FINAL_SIZE if REGISTRY[args.method].randomized else 1000),
        max_failures=args.max_failures, max_concurrent=args.max_concurrent, eval_eot=args.eval_eot,
        eval_every=args.eval_every or proxy.default_eval_every(REGISTRY[args.method].randomized, args.max_epochs,
                                                               args.scheduler), eval_memory=eval_memory,
        scheduler=args.scheduler, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        perturbation_interval=args.perturbation_interval,
        bf16=args.bf16, channels_last=args.channels_last, compile=args.compile, loader_workers=args.loader_workers,
        data_on_device=args.data_on_device, verbose=args.verbose)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        exp = make_config(args)
        data_mod.load(exp.dataset, exp.data_dir, exp.download, eps_eval=exp.eps_eval)  # fail now, not in every trial
    except (UsageError, data_mod.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from raysearch.search import cluster, launch  # import Ray; kept out of argument checking

    try:
        return launch.run(exp)
    except cluster.LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m raysearch.tune --method {exp.method} "
              f"--name {exp.name} --storage-path {exp.storage_path} --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
