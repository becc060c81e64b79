"""The final evaluation's CLI: ``python -m raysearch.evaluate --experiment <storage>/<name>
[--final-candidates front|band|all|K] [--trials ID ...] [--only-trials] [--subset N] [--eot N]
[--attacks NAME|GROUP ...] [--eps-list EPS ...] [--eval-memory SIZE]``. ``--final-candidates`` picks the trials
(default: the rule the search recorded, else band: the proxy front and the trials near it).
``--eps-list`` adds a robustness curve: the seen attacks again at each L∞ radius, each radius
one more run of the seen suite.

Exit codes: 0 all trials evaluated, 1 some trial's evaluation failed (the others' results are
written), 2 bad input."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from raysearch import store
from raysearch.attacks import memory
from raysearch.evaluate import candidates
from raysearch.evaluate.suite import GROUPS, EvalError, check_radii
from raysearch.evaluate.trials import evaluate_experiment


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m raysearch.evaluate",
                description="Full attack suite on the candidates of a finished search.")
    p.add_argument("--experiment", required=True, help="<storage>/<name> of a finished search")
    p.add_argument("--final-candidates", default=None, metavar="front|band|all|K",
                   help="trials to evaluate: front (the proxy front), band (the front and every trial within "
                        f"{candidates.BAND_WIDTH:g} of it in both clean and robust accuracy), all, or K (the K "
                        "best by non-dominated sorting); default: the search's recorded value, else band")
    p.add_argument("--trials", nargs="*", default=[], help="extra trial ids to evaluate")
    p.add_argument("--only-trials", action="store_true", help="skip the candidates; evaluate only --trials")
    p.add_argument("--subset", type=int, default=None, help="test images (default: the experiment's final_eval_size, else 1000)")
    p.add_argument("--eot", type=int, default=None, help="EOT draws for randomized predictors (default 20)")
    p.add_argument("--attacks", nargs="*", default=None,
                   help=f"attack names or groups ({', '.join(GROUPS)}); default: the default suite and the defense's attacks")
    p.add_argument("--eps-list", nargs="+", type=float, default=(), metavar="EPS",
                   help="L∞ radii in (0, 1] ([0, 1] pixel scale) of a robustness curve: the seen attacks run "
                        "again at each. Costly: every radius other than the trial's eps_eval is one more run of "
                        "the seen suite, which is most of the evaluation's time (k radii: about k+1 times as long)")
    p.add_argument("--eval-memory", default=None, metavar="SIZE",
                   help="memory the attacks may use, e.g. 2GB or 512MB (default: the search's recorded value, else "
                        "80%% of the GPU's free memory; a quarter of the available RAM on CPU)")
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
    if args.only_trials and args.final_candidates is not None:
        print("error: --only-trials evaluates only --trials; drop --final-candidates", file=sys.stderr)
        return 2
    if args.final_candidates is not None:
        try:
            args.final_candidates = candidates.parse_rule(args.final_candidates)
        except candidates.CandidatesError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        memory.parse_memory(args.eval_memory)
    except memory.MemorySizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.device:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            print(f"error: --device {args.device}: {e}", file=sys.stderr)
            return 2
    try:
        eps_list = check_radii(args.eps_list)
        summary = evaluate_experiment(args.experiment, args.trials, args.subset, args.eot, args.attacks,
                                      args.device, progress=lambda m: print(m, file=sys.stderr, flush=True),
                                      seed=args.seed, data_dir=args.data_dir, front=not args.only_trials,
                                      batch_size=args.batch_size, threads=args.threads, eps_list=eps_list,
                                      final_candidates=args.final_candidates, eval_memory=args.eval_memory)
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
