"""The hand-off from a finished search to the final evaluation: the full attack suite
(``raysearch.evaluate``) on the candidates of ``--final-candidates`` (by default the proxy front
and the trials near it; the front alone for a randomized defense), on the test split, each trial a
Ray task."""
from __future__ import annotations

import sys
import time

import ray

from raysearch import store
from raysearch.config import ExperimentConfig
from raysearch.evaluate import candidates
from raysearch.evaluate import trials as eval_trials


def final_evaluation(exp: ExperimentConfig) -> bool:
    """The full attack suite on the candidates of ``exp.final_candidates``, on the test split,
    each trial a Ray task with a worker's resources (so candidates run side by side where the
    cluster has room, on a GPU when workers have one); prints how many candidates and why, a
    line as each finishes, then the tables and the fronts recomputed per attack over every
    trial evaluated. ``exp.eps_list`` adds a robustness curve: the seen attacks again at each
    of its radii (each one more run of the seen suite). Returns whether every candidate was
    evaluated; a failure is printed on stderr and loses no other trial's results."""
    curve = f"; robustness curve at eps {', '.join(f'{r:g}' for r in exp.eps_list)}" if exp.eps_list else ""
    rows = store.read_rows(exp.exp_dir / store.TRIALS)
    chosen = candidates.select(rows, exp.final_candidates)
    print(f"\nfinal evaluation: full attack suite on {len(chosen.ids)} candidate(s): {chosen.describe()}; "
          f"{exp.final_eval_size} test images, EOT {exp.eot_samples} for randomized predictors{curve}", flush=True)
    left = candidates.band_left_out(rows, chosen)
    if left:
        print(f"  not evaluated: {len(left)} trial(s) within {candidates.BAND_WIDTH:g} of the proxy front; to add "
              f"them: python -m raysearch.evaluate --experiment {exp.exp_dir} --only-trials --trials "
              f"{' '.join(left)}", flush=True)
    try:
        summary = eval_trials.evaluate_experiment(
            exp.exp_dir, subset=exp.final_eval_size, eot=exp.eot_samples, data_dir=exp.data_dir,
            runner=ray_runner(exp), eps_list=exp.eps_list, final_candidates=exp.final_candidates,
            eval_memory=exp.eval_memory,
            # one intra-op thread per CPU: on a busy CPU the suite ran ~9x faster with one than
            # with torch's default
            threads=None if exp.gpus_per_worker else max(1, int(exp.cpus_per_worker)))
    except eval_trials.EvalError as e:
        print(f"final evaluation failed: {e}", file=sys.stderr)
        return False
    print(summary["report"], flush=True)
    for tid, why in summary["failed"].items():
        print(f"final evaluation of trial {tid} failed: {why}", file=sys.stderr)
    return not summary["failed"]


def ray_runner(exp: ExperimentConfig, heartbeat_s: float = 60.0):
    """A runner for ``evaluate_experiment``: every trial job a Ray task holding one training
    worker's resources; outcomes yielded as they finish, with a progress line each (and a
    heartbeat line every ``heartbeat_s`` seconds while none finishes)."""

    def run_jobs(jobs: list[eval_trials.TrialJob]):
        task = ray.remote(eval_trials.safe_evaluate_trial).options(
            num_cpus=exp.cpus_per_worker, num_gpus=exp.gpus_per_worker, max_retries=0)
        refs = {task.remote(job): job for job in jobs}
        res = ray.cluster_resources()
        slots = res.get("CPU", 1) // exp.cpus_per_worker if exp.cpus_per_worker else len(jobs)
        if exp.gpus_per_worker:
            slots = min(slots, res.get("GPU", 0) // exp.gpus_per_worker)
        print(f"  {len(jobs)} trial(s), up to {int(max(1, min(slots, len(jobs))))} at a time", flush=True)
        pending, t0, done = list(refs), time.time(), 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=heartbeat_s)
            if not ready:
                print(f"  ... {done}/{len(jobs)} evaluated ({time.time() - t0:.0f}s elapsed)", flush=True)
                continue
            job = refs[ready[0]]
            try:
                out = ray.get(ready[0])
            except Exception as e:  # the task's process died (OOM, node lost): report, keep the rest
                out = eval_trials.TrialOutcome.failure(job.trial_id, e, time.time() - t0)
            done += 1
            state = (f"worst seen {out.report.accuracy('worst_seen'):.3f}" if out.report is not None
                     else f"FAILED ({out.error})")
            print(f"  [{done}/{len(jobs)}] trial {job.trial_id} evaluated in {out.seconds:.0f}s: {state}", flush=True)
            yield out

    return run_jobs
