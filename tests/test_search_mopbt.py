"""MO-PBT (raysearch.search.schedulers.mopbt, clone_state) without a Ray run: Pareto ranking of
the population, an exploit that copies the parent's checkpoint and keeps the perturbed values
inside the search space, the clone's training state (parent's weights, own hyperparameters),
the Train run a clone trains in, and the lineage columns. The same path through real Ray,
killed and resumed, is in test_search_schedulers."""
from __future__ import annotations

import dataclasses
import json
import random
from types import SimpleNamespace

import optuna.distributions as od
import pytest
import torch
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pbt import _PBTTrialState

import search_spaces
from raysearch import store, trial_io
from raysearch.config import ExperimentConfig, default_config
from raysearch.search.recorder import StoreCallback
from raysearch.search.schedulers import CLONE_KEY, make_scheduler
from raysearch.search.schedulers.clone_state import restore_clone
from raysearch.search.schedulers.mopbt import MOPBT, PBT_DIR, explore, initial_configs, search_space
from raysearch.search.trial import loop_config, train_run
from trainables import REGISTRY

SPACE = {"lr": od.FloatDistribution(0.01, 0.2, log=True), "eps": od.FloatDistribution(0.0, 0.3, step=0.05),
         "steps": od.IntDistribution(1, 4), "width": od.IntDistribution(8, 64, log=True),
         "act": od.CategoricalDistribution(["relu", "gelu", "silu"])}


class Trial:
    """What the scheduler reads and changes of a Ray Tune trial (hashed by identity, as Tune's)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def is_finished(self):
        return False

    def set_config(self, config):
        self.config = config

    def set_experiment_tag(self, tag):
        self.experiment_tag = tag


class Controller:
    def __init__(self):
        self.paused = []

    def pause_trial(self, trial, should_checkpoint=True):
        self.paused.append(trial.trial_id)


def test_explore_keeps_every_value_inside_the_space_and_lists_what_changed():
    rng = random.Random(0)
    corners = [{k: (d.choices[i % 3] if isinstance(d, od.CategoricalDistribution) else (d.low, d.high)[i % 2])
                for k, d in SPACE.items()} for i in range(6)]
    moved = set()
    for i in range(600):
        config = corners[i % len(corners)]
        new, changed = explore(config, SPACE, rng)
        assert all(search_spaces.contains(d, new[k]) for k, d in SPACE.items()), new
        assert isinstance(new["steps"], int) and isinstance(new["width"], int)
        assert round(new["eps"] / 0.05, 9) == round(new["eps"] / 0.05)  # on the step grid
        assert changed == {k: [config[k], new[k]] for k in SPACE if new[k] != config[k]}
        moved |= set(changed)
    assert moved == set(SPACE)


def test_the_population_starts_with_the_defaults_then_seeded_samples_of_the_space():
    start = {"lr": 0.05, "eps": 0.1, "steps": 2, "width": 16, "act": "relu"}
    configs = initial_configs(SPACE, 5, seed=3, start=start)
    assert configs[0] == start and configs == initial_configs(SPACE, 5, seed=3, start=start)
    assert all(search_spaces.contains(d, c[k]) for c in configs for k, d in SPACE.items())
    assert len({c["lr"] for c in configs}) == 5


@pytest.fixture
def parent_checkpoint(tmp_path, digits):
    """A standard-training parent after 3 epochs (saved epoch index 2) with lr 0.1."""
    defense = REGISTRY["standard"]
    cfg = dataclasses.replace(default_config("standard", digits.spec), lr=0.1, epochs=4)
    torch.manual_seed(0)
    nets = defense.build(cfg, digits.spec)
    opts, scheds = defense.optimizers(nets, cfg, 40)
    x, y = digits.train.images()[:32], digits.train.y[:32]
    for _ in range(30):  # 30 of the 40 steps: the schedule is well past its warm-up
        loss = torch.nn.functional.cross_entropy(nets["classifier"](x), y)
        opts["classifier"].zero_grad()
        loss.backward()
        opts["classifier"].step()
        scheds["classifier"].step()
    folder = tmp_path / "exp" / "train" / "p" / "checkpoint_000002"
    trial_io.save(folder, nets=nets, opts=opts, scheds=scheds, epoch=2, method="standard", dataset="digits",
                  cfg=cfg, extra={"history": [{"epoch": 3, "clean_acc": 0.9}]})
    return folder, nets, opts


def _population(exp_dir, parent_folder) -> tuple[MOPBT, dict[str, Trial]]:
    space = {"lr": od.FloatDistribution(0.01, 0.2, log=True), "momentum": od.FloatDistribution(0.5, 0.95)}
    scheduler = MOPBT(space, exp_dir, interval=1, max_epochs=4, seed=0)
    results = {"p": (0.9, 0.5), "r": (0.5, 0.8), "s": (0.6, 0.6), "q": (0.2, 0.1)}
    trials = {}
    for trial_id, (clean, robust) in results.items():
        result = {"epoch": 3, "proxy_epoch": 3, "clean_acc": clean, "robust_acc": robust,
                  "checkpoint_path": str(parent_folder) if trial_id == "p" else "/gone"}
        trials[trial_id] = Trial(trial_id=trial_id, experiment_tag=trial_id, status="RUNNING",
                                 config={"lr": 0.1, "momentum": 0.9}, last_result=result)
        scheduler._trial_state[trials[trial_id]] = _PBTTrialState(trials[trial_id])
    return scheduler, trials


def test_the_bottom_of_the_pareto_ranking_clones_the_top(tmp_path, parent_checkpoint):
    folder, _, _ = parent_checkpoint
    exp_dir = tmp_path / "exp"
    scheduler, trials = _population(exp_dir, folder)
    controller = Controller()
    for trial_id in ("p", "r", "s"):  # their results at their last perturbation: the front, p and r at its ends
        trial = trials[trial_id]
        scheduler._save_trial_state(scheduler._trial_state[trial], 3, trial.last_result, trial)
    lower, upper = scheduler._quantiles()
    assert [t.trial_id for t in upper] == ["p"] and [t.trial_id for t in lower] == ["s"]  # of 3: one each
    q = trials["q"]
    scheduler._save_trial_state(scheduler._trial_state[q], 3, q.last_result, q)
    lower, upper = scheduler._quantiles()
    assert [t.trial_id for t in upper] == ["p"] and [t.trial_id for t in lower] == ["q"]
    assert scheduler.on_trial_result(controller, q, q.last_result) == TrialScheduler.NOOP
    assert controller.paused == ["q"]
    clone = q.config[CLONE_KEY]
    seed = exp_dir / clone["seed"]
    assert seed.parent == exp_dir / PBT_DIR / "q" and clone["clones"] == 1
    assert (seed / "state.pt").read_bytes() == (folder / "state.pt").read_bytes()  # the parent's checkpoint
    (event,) = clone["lineage"]
    assert event["epoch"] == 3 and event["parent"] == "p"
    assert event["changed"] == {k: [0.1 if k == "lr" else 0.9, q.config[k]] for k in ("lr", "momentum")
                                if q.config[k] != {"lr": 0.1, "momentum": 0.9}[k]}
    assert 0.01 <= q.config["lr"] <= 0.2 and 0.5 <= q.config["momentum"] <= 0.95
    # not again before another interval, and never on a stale proxy or at the last epoch
    assert scheduler.on_trial_result(controller, q, {**q.last_result, "epoch": 3}) == TrialScheduler.CONTINUE
    stale = {**q.last_result, "epoch": 4, "proxy_epoch": 3}
    assert scheduler.on_trial_result(controller, q, stale) == TrialScheduler.CONTINUE
    assert controller.paused == ["q"]


@pytest.mark.parametrize("change", [{"checkpoint_path": "replaced"}, {"epoch": 4, "final": True}],
                         ids=["checkpoint-gone", "parent-at-its-last-epoch"])
def test_no_exploit_when_the_parents_checkpoint_is_gone_or_final(tmp_path, parent_checkpoint, change):
    folder, _, _ = parent_checkpoint
    scheduler, trials = _population(tmp_path / "exp", folder)
    trials["p"].last_result.update(change)
    for trial_id in ("p", "r", "s"):
        trial = trials[trial_id]
        scheduler._save_trial_state(scheduler._trial_state[trial], 3, trial.last_result, trial)
    assert scheduler.on_trial_result(Controller(), trials["q"], trials["q"].last_result) == TrialScheduler.CONTINUE
    assert CLONE_KEY not in trials["q"].config and not (tmp_path / "exp" / PBT_DIR / "q").exists()


def test_a_clone_starts_from_the_parents_weights_with_its_own_hyperparameters(parent_checkpoint, digits):
    folder, parent_nets, parent_opts = parent_checkpoint
    defense = REGISTRY["standard"]
    cfg = dataclasses.replace(default_config("standard", digits.spec), lr=0.05, weight_decay=1e-3, epochs=4)
    torch.manual_seed(1)
    nets = defense.build(cfg, digits.spec)
    opts, scheds = defense.optimizers(nets, cfg, 40)
    epoch = restore_clone(trial_io.load_state(folder), nets, opts, scheds)
    assert epoch == 2  # the clone's first epoch is the parent's next one
    for mine, theirs in zip(nets["classifier"].state_dict().values(), parent_nets["classifier"].state_dict().values()):
        assert torch.equal(mine, theirs)
    group, parent_group = opts["classifier"].param_groups[0], parent_opts["classifier"].param_groups[0]
    assert group["weight_decay"] == 1e-3 and group["max_lr"] == pytest.approx(0.05)  # its own
    assert group["lr"] == pytest.approx(parent_group["lr"] / 2)  # the parent's schedule at half the scale
    assert scheds["classifier"].last_epoch == 30  # where the parent's schedule stood
    state = opts["classifier"].state[next(iter(nets["classifier"].parameters()))]
    assert torch.equal(state["momentum_buffer"],
                       parent_opts["classifier"].state[next(iter(parent_nets["classifier"].parameters()))]["momentum_buffer"])


def test_a_clone_trains_in_a_new_train_run_seeded_with_the_copy(tmp_path):
    exp = ExperimentConfig(method="standard", scheduler="mopbt", storage_path=str(tmp_path), name="e")
    assert train_run(exp, {"lr": 0.1}, "t1") == ("t1", {"lr": 0.1}, "")
    config = {"lr": 0.12, CLONE_KEY: {"seed": "pbt/t1/1-t2-epoch3", "clones": 1, "lineage": []}}
    name, sampled, seed = train_run(exp, config, "t1")
    assert name == "t1-clone1-t2-epoch3" and sampled == {"lr": 0.12}
    assert seed == str((tmp_path / "e" / "pbt" / "t1" / "1-t2-epoch3").resolve())
    assert loop_config(exp, sampled, "t1", seed)["seed_checkpoint"] == seed


def test_the_store_records_the_clones_values_and_lineage(tmp_path):
    exp = ExperimentConfig(method="pgd_at", scheduler="mopbt", name="e", max_epochs=4, num_samples=2)
    callback = StoreCallback(exp, tmp_path)
    trial = SimpleNamespace(trial_id="q", config={"eps_train": 0.1, "attack_steps": 3, "lr": 0.05})
    callback.on_trial_start(0, [trial], trial)
    (row,) = store.read_rows(tmp_path / store.TRIALS)
    assert (row["scheduler"], row["parent_trial_id"], row["cloned_at_epoch"], row["lineage_json"]) == (
        "mopbt", "", 0, "[]")
    lineage = [{"epoch": 2, "parent": "p", "changed": {"lr": [0.08, 0.064]}}]
    trial.config = {"eps_train": 0.12, "attack_steps": 3, "lr": 0.064,
                    CLONE_KEY: {"seed": "pbt/q/1-p-epoch2", "clones": 1, "lineage": lineage}}
    callback.run_started["q"] -= 30  # its first run lasted 30 s
    callback.on_trial_start(1, [trial], trial)  # restarted with its new config
    (row,) = store.read_rows(tmp_path / store.TRIALS)
    assert row["parent_trial_id"] == "p" and row["cloned_at_epoch"] == 2 and json.loads(row["lineage_json"]) == lineage
    assert row["hp_lr"] == 0.064 and row["hp_eps_train"] == 0.12 and json.loads(row["config_json"])["lr"] == 0.064
    # its time is both runs': the one before the clone and the clone's own (from its start as the
    # recorder saw it, actor start-up included, not the trial function's shorter wall_s)
    callback.run_started["q"] -= 20  # its second run lasted 20 s
    callback.on_trial_result(2, [trial], trial, {"final": True, "status": "completed", "epoch": 4, "clean_acc": 0.8,
                                                 "robust_acc": 0.3, "wall_s": 12.0})
    (row,) = store.read_rows(tmp_path / store.TRIALS)
    assert row["wall_s"] == pytest.approx(50.0, abs=1.0) and row["device_s"] == row["wall_s"]


def test_the_scheduler_is_built_from_the_experiment_config():
    exp = ExperimentConfig(method="pgd_at", scheduler="mopbt", perturbation_interval=3, max_epochs=9)
    scheduler = make_scheduler(exp)
    assert isinstance(scheduler, MOPBT) and scheduler._perturbation_interval == 3
    assert scheduler.space == search_space(exp) and set(scheduler.space) == {"eps_train", "attack_steps", "lr"}
