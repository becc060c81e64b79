"""The Optuna side of a search (raysearch.search.searcher): the samplers, and that failed trials
are told to Optuna as failed. What ``--resume`` reconciles is in test_search_faults."""
from __future__ import annotations

import math

import optuna
import pytest

from raysearch.schema import Status
from raysearch.search.searcher import OBJECTIVES, Searcher, front_gamma, make_sampler


@pytest.mark.parametrize("n,good", [(0, 2), (4, 2), (9, 3), (12, 3), (13, 4), (100, 25), (1000, 25)])
def test_tpe_models_a_quarter_of_the_trials_as_good(n, good):
    assert front_gamma(n) == good


@pytest.mark.parametrize("name,cls", [("tpe", optuna.samplers.TPESampler), ("nsga2", optuna.samplers.NSGAIISampler),
                                      ("gp", optuna.samplers.GPSampler), ("random", optuna.samplers.RandomSampler)])
def test_each_sampler_name_makes_its_sampler(name, cls):
    sampler = make_sampler(name, seed=0, num_samples=12)
    assert type(getattr(sampler, "base", sampler)) is cls


def test_samplers_start_with_a_third_of_the_trials_at_random_up_to_five():
    assert make_sampler("gp", 0, 12).base._n_startup_trials == 4
    assert make_sampler("gp", 0, 30).base._n_startup_trials == 5
    assert make_sampler("tpe", 0, 2).base._n_startup_trials == 1
    assert make_sampler("nsga2", 0, 12).base._population_size == 4


@pytest.mark.parametrize("ending", [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL])
def test_a_pruned_or_failed_point_is_not_proposed_again(ending):
    """The GP sampler models completed trials only: after one completed trial, the trial it
    proposes next is stopped, and with nothing new it would propose the very same point again.
    The search's sampler draws that trial at random instead; the one after a completed trial
    is the GP's own proposal."""
    space = {"eps": optuna.distributions.FloatDistribution(0.05, 0.3),
             "lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}

    def run(sampler):
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
        study.enqueue_trial({"eps": 0.2, "lr": 0.05})
        first = study.ask(space)
        study.tell(first, [0.8, 0.2])
        points = []
        for _ in range(2):
            trial = study.ask(space)
            points.append(trial.params)
            study.tell(trial, state=ending)
        return points

    plain = run(optuna.samplers.GPSampler(seed=0, n_startup_trials=1))
    assert plain[0] == plain[1]  # what the GP alone does
    ours = run(make_sampler("gp", seed=0, num_samples=3))
    assert ours[0] == plain[0]  # the GP's proposal is kept when it is new
    assert ours[1] != ours[0] and all(space[k]._contains(space[k].to_internal_repr(v)) for k, v in ours[1].items())


def _searcher(db) -> Searcher:
    space = {"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}
    return Searcher(space=space, metric=list(OBJECTIVES), mode=["max", "max"],
                    sampler=optuna.samplers.RandomSampler(seed=0),
                    storage=optuna.storages.RDBStorage(f"sqlite:///{db}"), study_name="s")


def test_a_failed_or_non_finite_trial_is_told_fail_with_its_reason(tmp_path):
    searcher = _searcher(tmp_path / "optuna.db")
    for trial_id in "abcd":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"clean_acc": 0.9, "robust_acc": 0.4, "status": Status.COMPLETED})
    searcher.on_trial_complete("b", {"clean_acc": math.nan, "robust_acc": math.nan, "status": Status.FAILED,
                                     "error": "diverged: loss"})
    searcher.on_trial_complete("c", {"clean_acc": 0.5, "robust_acc": math.inf})
    searcher.on_trial_complete("d", None, error=True)
    trials = sorted(searcher._ot_study.get_trials(), key=lambda t: t.number)
    State = optuna.trial.TrialState
    assert [t.state for t in trials] == [State.COMPLETE, State.FAIL, State.FAIL, State.FAIL]
    assert trials[0].values == [0.9, 0.4]
    assert [t.user_attrs.get("fail_reason") for t in trials] == [
        None, "diverged: loss", "non-finite objective", "the trial raised"]


def test_a_trial_the_scheduler_stopped_is_told_pruned_without_values(tmp_path):
    """A trial that ends on an epoch's report (no driver's final report) was stopped early: its
    accuracies are those of a shorter run, so Optuna is told PRUNED, not COMPLETE with them."""
    searcher = _searcher(tmp_path / "optuna.db")
    for trial_id in "abc":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"final": True, "epoch": 4, "clean_acc": 0.9, "robust_acc": 0.4,
                                     "status": Status.COMPLETED})
    searcher.on_trial_complete("b", {"epoch": 1, "clean_acc": 0.5, "robust_acc": 0.1, "done": True})
    searcher.on_trial_complete("c", {"epoch": 1, "clean_acc": 0.5, "robust_acc": 0.1}, error=True)
    trials = sorted(searcher._ot_study.get_trials(), key=lambda t: t.number)
    State = optuna.trial.TrialState
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL]
    assert trials[1].values is None and trials[1].user_attrs["stopped_at_epoch"] == 1
    # the Pareto front Optuna reports is made of complete trials only
    assert [t.number for t in searcher._ot_study.best_trials] == [0]


def test_the_gp_sampler_models_complete_trials_only(tmp_path):
    """Pruned trials are no observations for the GP: with one complete trial of the two it needs,
    any number of pruned ones leave it sampling at random (an empty relative sample)."""
    study = optuna.create_study(directions=["maximize", "maximize"])
    space = {"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}
    sampler = optuna.samplers.GPSampler(seed=0, n_startup_trials=2)
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.05}, distributions=space, values=[0.9, 0.4]))
    for lr in (0.02, 0.03, 0.04):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=space,
                                                  state=optuna.trial.TrialState.PRUNED))
    probe = study.ask()
    assert sampler.sample_relative(study, study._storage.get_trial(probe._trial_id), space) == {}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.02}, distributions=space, values=[0.8, 0.5]))
    assert set(sampler.sample_relative(study, study._storage.get_trial(probe._trial_id), space)) == {"lr"}


def test_a_failed_trial_without_parameters_is_no_repeat():
    """An Optuna trial asked and failed before it was given its parameters (what --resume fails
    when the killed search never started it) is no point to compare with: proposals go on."""
    space = {"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=make_sampler("gp", 0, 3))
    first = study.ask(space)
    study.tell(first, [0.8, 0.2])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # no parameters
    trial = study.ask(space)
    assert set(trial.params) == {"lr"}
