"""The Ray Tune callback that keeps an experiment's results files current: it turns each result
Ray Tune delivers into trials.parquet / evals.parquet rows (written atomically by
``raysearch.store``) and prints the search's progress. A checkpoint is stored by its path
relative to the experiment folder, so the folder can be moved whole."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import ray.tune

from raysearch import data as data_mod
from raysearch import schema, store, trial_io
from raysearch.config import ExperimentConfig, trial_config
from raysearch.schema import Protocol, Stage, Status, Threat
from raysearch.search.schedulers import CLONE_KEY
from raysearch.search.searcher import INTERRUPTED


def _eval_n(result: dict, row: dict) -> int | None:
    """The validation images the result's proxy accuracies were measured on (the row's earlier
    count where the result has none)."""
    n = result.get("eval_n")
    return row.get("eval_n") if n is None else int(n)


def _seconds(value) -> float:
    """A stored number of seconds, 0 where there is none (None or NaN)."""
    return value if value is not None and math.isfinite(value) else 0.0


PROXY_ROW = "proxy_robust"  # evals.parquet attack of the proxy's robust rows


class StoreCallback(ray.tune.Callback):
    """Writes trials.parquet / evals.parquet as results arrive (atomically) and prints progress.
    Rows are keyed (trial, stage, epoch, attack), so epochs re-reported after a resume replace
    their earlier rows instead of being counted twice. ``exp_dir``: the folder written to."""

    def __init__(self, exp: ExperimentConfig, exp_dir: Path):
        self.exp, self.exp_dir = exp, exp_dir
        self.trials: dict[str, dict] = {r["trial_id"]: r for r in store.read_rows(exp_dir / store.TRIALS)}
        self.evals: dict[tuple, dict] = {
            (r["trial_id"], r["stage"], r["epoch"], r["attack"]): r for r in store.read_rows(exp_dir / store.EVALS)}
        self.t0 = time.time()
        self.reconciled = False
        self.run_started: dict[str, float] = {}  # when each trial's current driver run started

    def on_step_begin(self, iteration, trials, **info):
        """Once, after --resume: a trial still marked running that the restored search does not
        know started after the search state was last saved; it will not run again."""
        if self.reconciled:
            return
        self.reconciled = True
        live = {t.trial_id for t in trials}
        lost = [r for r in self.trials.values() if r["status"] == Status.RUNNING and r["trial_id"] not in live]
        for row in lost:
            row.update(status=Status.FAILED, error=INTERRUPTED, finished_at=time.time())
        if lost:
            self._write()

    def _row(self, trial) -> dict:
        row = self.trials.get(trial.trial_id)
        if row is None:
            exp = self.exp
            row = schema.trial_row(experiment=exp.name, trial_id=trial.trial_id, method=exp.method,
                                   dataset=exp.dataset, arch=exp.arch, eps_eval=exp.eps_eval,
                                   num_workers=exp.workers_per_trial, started_at=time.time(),
                                   config=self._config(trial.config))
            row["scheduler"] = exp.scheduler
            self.trials[trial.trial_id] = row
        self._lineage(row, trial.config)
        return row

    def _config(self, config: dict) -> dict:
        """The trial's full method config from its sampled (or, MO-PBT, evolved) values."""
        exp = self.exp
        spec = data_mod.describe(exp.dataset, exp.data_dir, exp.eps_eval)
        sampled = {k: v for k, v in config.items() if k != CLONE_KEY}
        return dataclasses.asdict(trial_config(exp.method, spec, sampled, dict(exp.sets), exp.max_epochs, exp.arch))

    def _lineage(self, row: dict, config: dict):
        """After a MO-PBT clone: the trial's hyperparameters are now the perturbed ones, and its
        lineage columns say whose checkpoint it took at which epoch and what changed."""
        lineage = (config.get(CLONE_KEY) or {}).get("lineage") or []
        if json.dumps(lineage) == row.get("lineage_json"):
            return
        if row["trial_id"] in self.run_started:
            # the run before the clone counts in the trial's time: kept in wall_s until it ends
            row["wall_s"] = _seconds(row.get("wall_s")) + time.time() - self.run_started[row["trial_id"]]
        cfg = self._config(config)
        row.update({f"{schema.HP_PREFIX}{k}": v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))})
        row.update(config_json=json.dumps(cfg, default=str), lineage_json=json.dumps(lineage),
                   parent_trial_id=lineage[-1]["parent"] if lineage else "",
                   cloned_at_epoch=int(lineage[-1]["epoch"]) if lineage else 0)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)
        self.run_started[trial.trial_id] = time.time()
        self._write()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial)
        if result.get("final"):
            self._finish(row, result)
        elif "epoch" in result:
            row.update(epochs=int(result["epoch"]), clean_acc=result["clean_acc"], robust_acc=result["robust_acc"],
                       eval_n=_eval_n(result, row), nodes=result.get("nodes"),
                       checkpoint=self._checkpoint(result) or row.get("checkpoint"), node_ids=result.get("node_ids"),
                       # the latest epoch a restarted worker group resumed from (0: never restarted)
                       resumed_from=max(row.get("resumed_from") or 0, int(result.get("resumed_from") or 0)))
            if "train_started_at" in result and not result.get("resumed_from"):
                # seconds from the trial's start to its first training step (Ray + process start-up)
                row["startup_s"] = result["train_started_at"] - row["started_at"]
            self._record_epoch(trial.trial_id, result)
            self._progress(trial, row, result)
        self._write()

    def _record_epoch(self, trial_id: str, result: dict):
        """The proxy's rows of one epoch's result, keyed by the epoch the proxy last ran after
        (``proxy_epoch``; with ``--eval-every`` an epoch without a proxy re-reports the last one,
        which lands on the same rows; 0: none measured yet, no rows). Each row says how the proxy
        measured: PGD steps and restarts per attack, EOT draws, scoring calls, and the rand
        protocol where the predictor is randomized (more than one draw per gradient)."""
        exp = self.exp
        epoch = int(result.get("proxy_epoch", result["epoch"]))
        if epoch < 1:
            return
        eot = int(result.get("eval_eot", 1))
        common = dict(experiment=exp.name, trial_id=trial_id, method=exp.method, dataset=exp.dataset,
                      stage=Stage.TRIAL, epoch=epoch, n=int(result.get("eval_n", 0)), eot_samples=eot,
                      scoring_calls=int(result.get("eval_calls", 1)), queries=0,
                      protocol=Protocol.RAND if eot > 1 else Protocol.STANDARD,
                      seconds=float(result.get("eval_s", math.nan)))
        self.evals[(trial_id, Stage.TRIAL, epoch, "clean")] = schema.eval_row(
            **common, attack="clean", family="clean", threat=Threat.CLEAN, norm="none", eps=math.nan,
            accuracy=result["clean_acc"], restarts=0, iterations=0)
        # keyed by the stored attack name, as the rows read back on --resume are; the per-image
        # worst of PGD-margin, PGD-CE and APGD-T (and their BPDA runs), so no single attack's name
        attack = PROXY_ROW
        self.evals[(trial_id, Stage.TRIAL, epoch, attack)] = schema.eval_row(
            **common, attack=attack, family="proxy", threat=Threat.SEEN, norm="linf", eps=exp.eps_eval,
            accuracy=result["robust_acc"], restarts=int(result.get("eval_restarts", 1)),
            iterations=int(result.get("eval_iterations", exp.eval_steps)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        """A trial that ends without its driver's final report was stopped by the scheduler: it
        counts as completed with the metrics of the last epoch it ran (Optuna is told the same)."""
        row = self._row(trial)
        if row["status"] != Status.RUNNING:
            return
        if not row.get("epochs"):
            row.update(status=Status.FAILED, error="stopped before its first epoch ended", finished_at=time.time())
        else:
            row.update(status=Status.COMPLETED, stopped_early=row["epochs"] < self.exp.max_epochs,
                       finished_at=time.time(), wall_s=time.time() - row["started_at"])
            row["device_s"] = row["wall_s"] * self._devices()
            print(f"[{self._done()}/{self.exp.num_samples}] trial {row['trial_id']} stopped early after "
                  f"{row['epochs']} epoch(s) in {row['wall_s']:.0f}s: clean {row['clean_acc']:.3f}  "
                  f"robust {row['robust_acc']:.3f}", flush=True)
        self._write()

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if row["status"] == Status.RUNNING:
            err = getattr(trial, "error_file", None)
            msg = "the trial's driver failed"
            if err and os.path.exists(err):
                lines = [ln for ln in Path(err).read_text().splitlines() if ln.strip()]
                msg = lines[-1][:500] if lines else msg
            row.update(status=Status.FAILED, error=msg, finished_at=time.time())
            print(f"  trial {trial.trial_id} failed: {msg}", flush=True)
        self._write()

    def _finish(self, row: dict, result: dict):
        # epochs whose results were in flight when an earlier driver died (same keys: no duplicates)
        for epoch_result in json.loads(result.get("history_json") or "[]"):
            self._record_epoch(row["trial_id"], epoch_result)
        # this run's time from its start as the recorder saw it, so that it includes the trial
        # actor's start-up (as startup_s does); the trial's own measure if the start was not seen.
        # A MO-PBT clone's wall_s holds its runs before its last clone (NaN for any other trial).
        started = self.run_started.get(row["trial_id"])
        wall = time.time() - started if started is not None else result.get("wall_s")
        if wall is not None and row.get("parent_trial_id"):
            wall += _seconds(row.get("wall_s"))
        row.update(status=result["status"], error=result.get("error"), finished_at=time.time(),
                   wall_s=wall, checkpoint=self._checkpoint(result) or row.get("checkpoint"))
        if result["status"] == Status.COMPLETED:
            row.update(clean_acc=result["clean_acc"], robust_acc=result["robust_acc"], epochs=int(result["epoch"]),
                       eval_n=_eval_n(result, row),
                       nodes=result.get("nodes") or row.get("nodes"), node_ids=result.get("node_ids") or row.get("node_ids"))
        row["device_s"] = (row.get("wall_s") or 0.0) * self._devices()
        what = (f"clean {row['clean_acc']:.3f}  robust {row['robust_acc']:.3f}" if result["status"] == Status.COMPLETED
                else f"FAILED: {row['error']}")
        print(f"[{self._done()}/{self.exp.num_samples}] trial {row['trial_id']} done in {row.get('wall_s', 0):.0f}s: "
              f"{what}", flush=True)

    def _checkpoint(self, result: dict) -> str:
        """The result's checkpoint folder (Ray reports it absolute) relative to the experiment
        folder when it lies inside it; "" if the result has none."""
        return trial_io.relative_to_experiment(result.get("checkpoint_path") or "", self.exp_dir)

    def _devices(self) -> float:
        """Devices a trial holds: its workers' GPUs, else one per CPU worker."""
        return self.exp.workers_per_trial * (self.exp.gpus_per_worker or 1)

    def _done(self) -> int:
        return sum(r["status"] != Status.RUNNING for r in self.trials.values())

    def _progress(self, trial, row, result):
        epoch = int(result["epoch"])
        measured = int(result.get("proxy_epoch", epoch))  # --eval-every: the epoch the proxy last ran after
        if measured < 1:
            what = "proxy not measured yet"
        else:
            what = f"clean {result['clean_acc']:.3f}  robust {result['robust_acc']:.3f}"
            if measured != epoch:
                what += f" (proxy of epoch {measured})"
        print(f"    trial {trial.trial_id} epoch {epoch}/{self.exp.max_epochs}: {what}  "
              f"({time.time() - self.t0:.0f}s elapsed)", flush=True)

    def _write(self):
        store.write_trials(self.exp_dir, self.trials.values())
        store.write_evals(self.exp_dir, self.evals.values())
