"""The Optuna side of a search: the samplers, and Ray Tune's Optuna adapter made to tell Optuna
about failed and interrupted trials."""
from __future__ import annotations

import math
import warnings

import optuna
from ray.tune.search.optuna import OptunaSearch

from raysearch.schema import Status

OBJECTIVES = ("clean_acc", "robust_acc")  # both maximized
INTERRUPTED = "interrupted: the search was killed before it saved this trial; another trial took its place"


def stopped_early(result: dict | None) -> bool:
    """Whether a trial's last result is an epoch's report rather than its driver's final one
    (``raysearch.search.trial``): the scheduler stopped it at that epoch."""
    return bool(result) and "epoch" in result and not result.get("final")


class Searcher(OptunaSearch):
    """OptunaSearch that tells Optuna FAIL (with the reason as a user attribute) for a trial that
    raised, diverged or reported a non-finite objective; the stock one leaves such a trial
    RUNNING forever, which skews the sampler (see README, 'Why Ray is configured as it is').
    A trial the scheduler stopped early is told PRUNED, without values: its accuracies are
    those of a shorter training run, which the sampler must not model as final (the GP and
    NSGA-II samplers skip pruned trials; TPE counts them among its not-good ones once enough
    trials completed to fill its good set)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        values = [None if not result else result.get(m) for m in OBJECTIVES]
        pruned = not error and stopped_early(result)
        failed = error or (result or {}).get("status") == Status.FAILED or any(
            v is None or not math.isfinite(v) for v in values)
        if not (failed or pruned) or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            self._completed_trials.add(trial_id)  # told before the driver restarted (--resume)
            return
        if pruned:
            self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, "stopped_at_epoch", int(result["epoch"]))
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        else:
            reason = (result or {}).get("error") or ("the trial raised" if error else "non-finite objective")
            self._ot_study._storage.set_trial_user_attr(ot_trial._trial_id, "fail_reason", str(reason)[:1000])
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str):
        """After a killed driver (--resume): an Optuna trial asked after the search state was
        last saved belongs to no Tune trial (Tune asks for a new one in its place) and would stay
        RUNNING forever; it is failed with the reason."""
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id not in known:
                self._ot_study._storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
                self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def front_gamma(n: int) -> int:
    """How many of n finished trials TPE models as good: a quarter (at least 2, at most 25).
    Optuna's multi-objective default, a tenth, is one trial until the tenth, and TPE then samples
    around a single point of the front instead of along it (bench/search_efficiency.py)."""
    return min(max(2, math.ceil(0.25 * n)), 25)


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def _same_point(a: dict, b: dict) -> bool:
    """Whether two trials' parameters are the same point (floats to 1e-9); a parameter one of
    them lacks (a conditional one) makes them differ."""
    return a.keys() == b.keys() and all(
        math.isclose(v, b[k], rel_tol=1e-9, abs_tol=1e-12) if isinstance(v, float) and isinstance(b[k], float)
        else v == b[k] for k, v in a.items())


class NoRepeats(optuna.samplers.BaseSampler):
    """A sampler that never proposes again the point of a finished trial: where the wrapped
    sampler does, this trial's values are drawn independently (at random) instead. The GP and
    NSGA-II samplers model only completed (and running) trials, so after a trial is pruned or
    failed nothing they see has changed and they propose the same point again: in a MO-ASHA
    search one trial at a time, the GP sampler proposed one corner of the space for every trial
    after the first, and MO-ASHA stopped each of them."""

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int):
        self.base = base
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._redrawn: set[int] = set()  # numbers of the trials whose proposal was a repeat

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        params = self.base.sample_relative(study, trial, search_space)
        if params and any(_same_point(params, {k: t.params.get(k) for k in params})
                          for t in study._get_trials(deepcopy=False, states=FINISHED)):
            self._redrawn.add(trial.number)
            return {}  # every parameter then comes from sample_independent
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        sampler = self._random if trial.number in self._redrawn else self.base
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._redrawn.discard(trial.number)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._random.reseed_rng()


def make_sampler(name: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return NoRepeats(_model_sampler(name, seed, num_samples), seed)


def _model_sampler(name: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar (Optuna's default): concurrent trials see each other as running, so
        # trials asked together are not drawn from the same spot
        with warnings.catch_warnings():  # gamma is deprecated (Optuna 4.9) but kept until Optuna 6
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(num_samples // 3, 1)),
                                              multivariate=True, constant_liar=True, gamma=front_gamma)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, num_samples // 3)))
    if name == "gp":
        # the default: Gaussian-process regression with log expected hypervolume improvement
        # (qLogEHVI over the trials still running, so concurrent trials are not drawn alike);
        # it beat TPE in 6/6 seeds and random search in 5/6 at N=10 (bench/search_efficiency.py)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(5, max(num_samples // 3, 1)))
    raise ValueError(f"unknown sampler {name!r}")
