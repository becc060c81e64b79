"""What Ray costs a trial: the same training work (method, model, data, epochs, per-epoch proxy
evaluation) run as a bare PyTorch loop in this process and as a raysearch trial through the real
search (Ray Tune trial → Ray Train controller → one Ray Train worker), alternating: bare loop,
search, bare loop again, ``--repeats`` times.

Two numbers, kept apart because they scale differently:

* per epoch of training: the trial's epochs 2..N (as its driver received their reports: training,
  proxy evaluation, report, checkpoint) over the bare loop's same epochs (the mean of the runs
  before and after the search; their ratio, after/before, is printed as the machine's own drift
  in those minutes), and over the worker's own seconds in those epochs (what Ray adds between
  epochs, measured inside the trial, free of that drift);
* fixed seconds per trial, from the marks the worker reports with its first epoch:

  start-up  trial start → first training step = driver + imports + setup
    driver   trial start → the Train worker process exists (Train controller process,
             worker placement group, worker process start)
    imports  worker process start → the worker loop is entered (Ray worker, torch, process group)
    setup    loop entry → first training step (data, build, optimizers, loader)
  tail       last epoch's end → the driver returns (final report, checkpoint, shutdown)

for the first trial of a search and for later ones (``--later-trials``), which start in the first
one's driver process. Both sides use the same number of torch threads (a Ray worker with 1 CPU
gets 1 thread) and the same glibc malloc settings: a search gives its Ray workers
``raysearch.perf.ALLOCATOR_ENV``, so this script re-executes itself with them for the bare loop.

    .venv/bin/python bench/ray_overhead.py                   # ≈ 60 s of work per side
    .venv/bin/python bench/ray_overhead.py --epochs 4 --repeats 1 --later-trials 0   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from bare import bare_trial  # noqa: E402
from raysearch import data as data_mod, perf  # noqa: E402
from raysearch.config import ExperimentConfig  # noqa: E402


def run_bare(args) -> dict:
    """Wall seconds of the bare loop, and of its steady state (epoch 1's end to the last's)."""
    t0 = time.time()
    ends = [time.time() for _ in bare_trial(args.method, {}, dict(args.sets), args.epochs, args.eval_size,
                                            args.eval_steps)]
    return {"wall_s": ends[-1] - t0, "steady_s": ends[-1] - ends[0]}


def run_ray(args, root: Path, name: str) -> list[dict]:
    """One search of 1 + ``--later-trials`` trials, one at a time; the first trains the defaults
    (the search's enqueued start point, the bare loop's hyperparameters), later ones sampled
    configurations, which start in the first trial's driver process."""
    from raysearch import store
    from raysearch.search import launch

    exp = ExperimentConfig(method=args.method, num_samples=1 + args.later_trials, max_epochs=args.epochs,
                           storage_path=str(root), name=name, sets=tuple(args.sets),
                           eps_eval=data_mod.describe("digits").eps_eval, eval_size=args.eval_size,
                           eval_steps=args.eval_steps, final_eval=False, cpus_per_worker=args.threads,
                           max_concurrent=1)
    launch.run(exp)
    out = []
    for row in sorted(store.read_rows(root / name / store.TRIALS), key=lambda r: r["started_at"]):
        lines = (root / name).glob(f"*{row['trial_id']}*/result.json")
        results = [json.loads(line) for p in lines for line in p.read_text().splitlines()]
        epochs = sorted((r for r in results if "train_s" in r), key=lambda r: r["epoch"])
        first = next(r for r in epochs if "train_started_at" in r)
        # epoch 1's report to the last epoch's, as the trial's driver received them, and the
        # worker's own training + proxy-evaluation seconds in those epochs
        steady = epochs[-1]["time_total_s"] - epochs[0]["time_total_s"]
        out.append({"trial_s": row["finished_at"] - row["started_at"], "steady_s": steady,
                    "own_s": sum(r["train_s"] + r["eval_s"] for r in epochs[1:]),
                    "driver": first["worker_started_at"] - row["started_at"],
                    "imports": first["loop_started_at"] - first["worker_started_at"],
                    "setup": first["train_started_at"] - first["loop_started_at"],
                    "startup_s": row["startup_s"],
                    "tail_s": row["finished_at"] - row["started_at"] - row["startup_s"] - steady
                    - first["train_s"] - first["eval_s"]})
    return out


def main(argv=None) -> int:
    missing = perf.allocator_env(os.environ)
    if missing and argv is None:  # glibc reads them at process start: the bare loop's side must too
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **missing})
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="pgd_at")
    p.add_argument("--epochs", type=int, default=46, help="epochs per side (default 46: ≈ 62 s of PGD-AT on digits here)")
    p.add_argument("--eval-size", type=int, default=180)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--later-trials", type=int, default=1,
                   help="trials after the first in each search, for the start-up of a trial whose driver "
                        "process is reused (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads = CPUs of the Ray worker (default 1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from raysearch.config import parse_set

    args.sets = parse_set(args.sets, args.method)
    torch.set_num_threads(args.threads)
    print(f"ray_overhead: {args.method} on digits, {args.epochs} epochs, eval {args.eval_size} images × "
          f"PGD-{args.eval_steps}, {args.threads} thread(s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; malloc "
          f"{' '.join(f'{k}={v}' for k, v in os.environ.items() if k.startswith('MALLOC_')) or 'defaults'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            before = run_bare(args)
            trials = run_ray(args, Path(tmp), f"overhead{i}")
            after = run_bare(args)
            bare = {k: (before[k] + after[k]) / 2 for k in before}
            first, later = trials[0], trials[1:]
            rows.append((bare, first, later, after["steady_s"] / before["steady_s"]))
            print(f"[{i + 1}] bare {before['wall_s']:.1f}s before, {after['wall_s']:.1f}s after the search "
                  f"(after/before {after['steady_s'] / before['steady_s']:.3f}: this machine's drift) | trial "
                  f"{first['trial_s']:.1f}s = start-up {first['startup_s']:.1f}s (driver {first['driver']:.1f} + "
                  f"imports {first['imports']:.1f} + setup {first['setup']:.1f}) + epochs + tail {first['tail_s']:.1f}s"
                  f" | epochs 2..{args.epochs}: trial {first['steady_s']:.1f}s (worker's own {first['own_s']:.1f}s), "
                  f"bare {bare['steady_s']:.1f}s | per epoch: trial/bare {first['steady_s'] / bare['steady_s']:.3f}, "
                  f"trial/worker's own {first['steady_s'] / first['own_s']:.3f} | whole trial/bare "
                  f"{first['trial_s'] / bare['wall_s']:.3f}"
                  + "".join(f" | later trial: start-up {t['startup_s']:.1f}s (driver {t['driver']:.1f} + imports "
                            f"{t['imports']:.1f} + setup {t['setup']:.1f})" for t in later)
                  + f" | load {os.getloadavg()[0]:.1f}", flush=True)
    med = statistics.median
    per_epoch = med(f["steady_s"] / b["steady_s"] for b, f, _, _ in rows)
    later = [t["startup_s"] for _, _, ts, _ in rows for t in ts]
    fixed = med(f["startup_s"] + f["tail_s"] for _, f, _, _ in rows)
    print(f"per epoch of training, trial/bare (median): {per_epoch:.3f}; the bare loop's own drift over a search "
          f"(after/before): {', '.join(f'{d:.3f}' for *_, d in rows)}")
    print(f"per epoch, what Ray adds between the worker's epochs (trial/worker's own, median): "
          f"{med(f['steady_s'] / f['own_s'] for _, f, _, _ in rows):.3f}")
    print(f"start-up per trial (trial start → first training step, median): first trial of a search "
          f"{med(f['startup_s'] for _, f, _, _ in rows):.1f}s" + (f", later trials {med(later):.1f}s" if later else ""))
    print(f"whole first trial / bare loop (median): {med(f['trial_s'] / b['wall_s'] for b, f, _, _ in rows):.3f}; "
          f"fixed seconds per trial (start-up + tail) {fixed:.1f}, so with ≈1.00 per epoch the whole-trial ratio "
          f"is 1.05 at ≈ {fixed / 0.05:.0f}s of work")
    return 0


if __name__ == "__main__":
    sys.exit(main())
