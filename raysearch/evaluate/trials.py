"""The final evaluation of an experiment: which trials (the candidates of the
``--final-candidates`` rule, ``raysearch.evaluate.candidates``, plus any asked for), one job per
trial (``TrialJob``, picklable so it can run as a Ray task), each trial's suite from its
checkpoint (``evaluate_trial``), and the results written once at the end (``write_results``),
with the fronts recomputed over every trial evaluated so far (``raysearch.evaluate.fronts``).

With ``eps_list`` each trial's seen attacks also run at those L∞ radii (the robustness curve):
every radius other than the trial's ε_eval costs one more run of the seen suite. Its rows are
named ``<attack>@<radius>`` (see ``raysearch.evaluate.report``); trials.parquet's final_*
columns, the flags and the fronts of the plain names stay the ε_eval results."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from raysearch import store
from raysearch.attacks import AttackSpec, memory
from raysearch.evaluate import candidates, checks, fronts, report
from raysearch.evaluate.results import PredictorReport
from raysearch.evaluate.runner import evaluate_predictor
from raysearch.evaluate.suite import DEFAULT_EOT, EvalError, check_radii, expand_attacks
from raysearch.schema import Stage

__all__ = ["DEFAULT_SUBSET", "EvalError", "TrialJob", "TrialOutcome", "evaluate_experiment",
           "evaluate_trial", "plan", "safe_evaluate_trial", "write_results"]

log = logging.getLogger(__package__)

DEFAULT_SUBSET = 1000  # test images per trial unless the experiment recorded final_eval_size


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
    eps_list: tuple[float, ...] = ()  # L∞ radii of the robustness curve ([0, 1] pixel scale)
    eval_memory: str = ""  # memory budget of the attacks ("2GB"); "": from the device (raysearch.attacks.memory)


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


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _recorded_config(exp_dir: Path) -> dict[str, Any]:
    """The experiment's config as experiment.json recorded it ({} if there is none)."""
    path = exp_dir / store.EXPERIMENT
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{path} is not valid JSON ({e})") from None
    cfg = obj.get("config", obj)
    return cfg if isinstance(cfg, dict) else {}


def _checkpoint_folder(exp_dir: Path, row: dict) -> Path:
    """The trial's checkpoint folder, its stored path taken relative to the folder the
    experiment is in now (``raysearch.trial_io.checkpoint_folder``; absolute paths of older
    results still work)."""
    from raysearch import trial_io

    folder = trial_io.checkpoint_folder(exp_dir, row["checkpoint"])
    if folder is None:
        raise EvalError(f"trial {row['trial_id']}: checkpoint {row['checkpoint']} not found in {exp_dir}")
    return folder


def plan(exp_dir: Path, trial_ids, subset, eot, attacks, seed, data_dir, front, batch_size, device,
         threads, eps_list=(), final_candidates: str | None = None, eval_memory: str | None = None
         ) -> tuple[list[TrialJob], list[dict], candidates.Selection | None]:
    """Validate the request and list the trials to evaluate: the candidates of the
    ``final_candidates`` rule (none unless ``front``), then ``trial_ids``.
    Returns the jobs, the trials' rows and the candidates' selection (None without ``front``)."""
    from raysearch import data as data_mod

    if not (exp_dir / store.TRIALS).exists():
        raise EvalError(f"{exp_dir / store.TRIALS} not found: pass --experiment <storage>/<name> of a finished search")
    recorded = _recorded_config(exp_dir)
    subset = int(recorded.get("final_eval_size", DEFAULT_SUBSET)) if subset is None else int(subset)
    eot = int(recorded.get("eot_samples", DEFAULT_EOT)) if eot is None else int(eot)
    if subset < 1:
        raise EvalError(f"subset must be >= 1, got {subset}")
    if eot < 1:
        raise EvalError(f"eot must be >= 1, got {eot}")
    expand_attacks(attacks)  # unknown names fail here, before any work
    try:  # the budget asked for, else the one the search recorded, else planned from the device
        eval_memory = memory.check_memory(recorded.get("eval_memory", "") if eval_memory is None else eval_memory)
    except memory.MemorySizeError as e:
        raise EvalError(str(e)) from None
    eps_list = check_radii(eps_list)
    try:  # the rule asked for, else the one the search recorded, else band (recorded before the option)
        rule = candidates.parse_rule(final_candidates or recorded.get("final_candidates") or candidates.DEFAULT_RULE)
    except candidates.CandidatesError as e:
        raise EvalError(str(e)) from None
    rows = store.read_rows(exp_dir / store.TRIALS)
    by_id = {r["trial_id"]: r for r in rows}
    selection = candidates.select(rows, rule) if front else None
    ids = list(selection.ids) if selection else []
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
    data_dir = data_dir or recorded.get("data_dir", "data")
    try:
        # a user's data set has no radius of its own: the search's recorded one
        data = data_mod.load(dataset, data_dir, eps_eval=recorded.get("eps_eval"))
    except data_mod.DataError as e:
        raise EvalError(str(e)) from None
    for tid in ids:
        _checkpoint_folder(exp_dir, by_id[tid])
    n = min(subset, len(data.test))
    attacks = None if attacks is None else tuple(attacks)
    jobs = [TrialJob(tid, by_id[tid], str(exp_dir.resolve()), dataset, data_dir, subset, eot, attacks, seed,
                     batch_size, device, threads, n, eps_list, eval_memory) for tid in ids]
    return jobs, rows, selection


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
        data = data_mod.load(job.dataset, job.data_dir, eps_eval=job.row.get("eps_eval"))
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
                                 progress=progress, eps_list=job.eps_list, eval_memory=job.eval_memory or None)
    finally:
        torch.set_num_threads(before)
    proxy = checks.proxy_check(row.get("robust_acc"), row.get("eval_n"), rep.accuracy("worst_seen"), rep.n)
    if proxy is not None:
        rep.checks[checks.FLAG_PROXY] = proxy
        rep.flags += checks.fired({checks.FLAG_PROXY: proxy})
    base = {"experiment": row.get("experiment") or Path(job.exp_dir).name, "trial_id": tid,
            "method": row.get("method"), "dataset": job.dataset}
    return TrialOutcome(tid, rep, report.report_rows(rep, base), report.format_table(tid, row.get("method", ""), rep),
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


def evaluate_experiment(exp_dir, trial_ids: Iterable[str] | None = None, subset: int | None = None,
                        eot: int | None = None, attacks: Iterable[str | AttackSpec] | None = None,
                        device: str | torch.device | None = None,
                        progress: Callable[[str], None] | None = None, seed: int = 0,
                        data_dir: str | None = None, front: bool = True,
                        batch_size: int = 500, threads: int | None = None,
                        runner: Callable[[list[TrialJob]], Iterable[TrialOutcome]] | None = None,
                        eps_list: Iterable[float] = (), final_candidates: str | None = None,
                        eval_memory: str | None = None) -> dict[str, Any]:
    """Run the suite on the candidates (``front``) plus ``trial_ids``; write the results;
    return a summary: {"trials": {id: {...}}, "fronts": {attack: [ids]}, "hypervolume": {...},
    "candidates": why these trials (one line; '' without ``front``), "subset", "eot",
    "seconds", "report": printable text}. The fronts are over every trial evaluated so far,
    earlier evaluations' included.

    ``final_candidates``: front, band, all or K (``raysearch.evaluate.candidates``); default the
    rule the experiment recorded, else band. ``eval_memory``: the attacks' memory budget ("2GB";
    default the one the experiment recorded, else planned from the device's free memory,
    ``raysearch.attacks.memory``). ``threads``: torch intra-op threads
    while a trial is evaluated (restored after); 1 is much faster for small models on a busy
    CPU, where threads of one operator wait for each other.

    ``eps_list``: L∞ radii in (0, 1] of the robustness curve; the seen attacks also run at each
    (a radius equal to the trial's ε_eval is not run twice). Every further radius costs one
    more run of the seen suite, which is most of the evaluation's time (APGD-T and Square
    dominate): k radii make it about k + 1 times as long. A trial's summary
    has "curve": {radius: worst case over seen attacks}, ε_eval included.

    ``runner`` maps the trial jobs to their outcomes, in any order (default: one after the
    other in this process, with ``progress`` lines per attack). The search's driver passes one
    that runs every job as a Ray task, in parallel where the cluster has room. Results are
    written once, here, after every job has returned."""
    if threads is not None and threads < 1:
        raise EvalError(f"threads must be >= 1, got {threads}")
    t_start = time.perf_counter()
    exp_dir = Path(exp_dir)
    jobs, rows, selection = plan(exp_dir, trial_ids, subset, eot, attacks, seed, data_dir, front, batch_size,
                                 None if device is None else str(device), threads, eps_list, final_candidates,
                                 eval_memory)
    why = f"{len(selection.ids)} candidate(s): {selection.describe()}" if selection else ""
    if progress and why:
        progress(why)
    if runner is None:
        outcomes = [safe_evaluate_trial(job, progress) for job in jobs]
    else:
        outcomes = list(runner(jobs))
    order = {job.trial_id: i for i, job in enumerate(jobs)}
    outcomes.sort(key=lambda o: order[o.trial_id])
    summary = write_results(exp_dir, rows, outcomes, jobs[0].subset_n, jobs[0].eot, time.perf_counter() - t_start)
    return {**summary, "candidates": why}


def checks_json(rep: PredictorReport) -> dict[str, dict]:
    """The report's masking checks as trials.parquet's ``masking_checks`` holds them:
    {name: {count, n, limit, fired, what}}."""
    return {name: check.as_dict() for name, check in rep.checks.items()}


def write_results(exp_dir: Path, rows: list[dict], outcomes: list[TrialOutcome], subset_n: int, eot: int,
                  seconds: float) -> dict[str, Any]:
    """Store every successful outcome (evals.parquet rows replaced per trial; final_* columns,
    masking_flags and masking_checks in trials.parquet) and build the summary; failed trials
    keep their earlier results and are listed under "failed". The fronts are computed over the final rows read back from
    evals.parquet: every trial evaluated so far, this evaluation's trials first."""
    reports = {o.trial_id: o.report for o in outcomes if o.report is not None}
    failed = {o.trial_id: o.error for o in outcomes if o.report is None}
    by_id = {r["trial_id"]: r for r in rows}
    old = store.read_rows(exp_dir / store.EVALS)
    kept = [r for r in old if not (r.get("stage") == Stage.FINAL and r.get("trial_id") in reports)]
    store.write_evals(exp_dir, kept + [r for o in outcomes for r in o.rows])
    for r in rows:
        rep = reports.get(r["trial_id"])
        if rep is not None:
            r["final_clean_acc"] = rep.clean_acc
            r["final_n"] = rep.n
            r["final_worst_seen"] = rep.accuracy("worst_seen")
            r["final_union_unseen"] = rep.accuracy("union_unseen")
            r["masking_flags"] = ";".join(rep.flags)
            r["masking_checks"] = json.dumps(checks_json(rep))
    store.write_trials(exp_dir, rows)

    everything = fronts.evaluated(store.read_rows(exp_dir / store.EVALS), [o.trial_id for o in outcomes])
    on_front, hv = fronts.fronts(everything)
    texts = [o.text for o in outcomes] + ([fronts.format_fronts(on_front, hv, everything)] if everything else [])
    return {
        "trials": {tid: {"method": by_id[tid].get("method"), "clean_acc": rep.clean_acc,
                         "worst_seen": rep.accuracy("worst_seen"), "union_unseen": rep.accuracy("union_unseen"),
                         "flags": list(rep.flags), "checks": checks_json(rep),
                         "attacks": {r.attack: r.accuracy for r in rep.results},
                         "aggregates": {k: v[2] for k, v in rep.aggregates.items()},
                         "curve": rep.robustness_curve()}
                   for tid, rep in reports.items()},
        "fronts": on_front, "hypervolume": hv, "subset": subset_n, "eot": eot, "failed": failed,
        "seconds": seconds, "report": "\n\n".join(texts),
    }
