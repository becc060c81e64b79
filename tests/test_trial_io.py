"""Checkpoints of one trial (raysearch.trial_io): saving and rebuilding, and the checkpoint paths
the results store relative to the experiment folder, found again wherever the folder is."""
from __future__ import annotations

import os
import shutil

import torch

from raysearch import trial_io
from raysearch.config import default_config
from trainables import REGISTRY


def _checkpoint(folder, spec, seed: int = 0):
    torch.manual_seed(seed)
    cfg = default_config("standard", spec)
    nets = REGISTRY["standard"].build(cfg, spec)
    trial_io.save(folder, nets=nets, opts={}, scheds={}, epoch=2, method="standard", dataset=spec.name, cfg=cfg)
    return nets


def test_a_saved_trial_rebuilds_as_it_was(tmp_path, digits):
    nets = _checkpoint(tmp_path / "ckpt", digits.spec)
    assert trial_io.load_meta(tmp_path / "ckpt")["epoch"] == 2
    defense, cfg, rebuilt, predictor = trial_io.rebuild(tmp_path / "ckpt", digits.spec)
    assert defense.name == "standard" and cfg == default_config("standard", digits.spec)
    x = torch.rand(4, 1, 8, 8)
    nets["classifier"].eval()
    assert torch.equal(predictor.model(x), nets["classifier"](x)) and not predictor.randomized
    assert not any(p.requires_grad for p in rebuilt["classifier"].parameters())


def test_a_path_inside_the_experiment_is_stored_relative_to_it(tmp_path):
    exp_dir = tmp_path / "storage" / "exp"
    inside = exp_dir / "train" / "t1" / "checkpoint_000007"
    assert trial_io.relative_to_experiment(str(inside), exp_dir) == "train/t1/checkpoint_000007"
    assert trial_io.relative_to_experiment(inside, str(exp_dir) + "/") == "train/t1/checkpoint_000007"
    # outside the experiment (another storage, a cloud URI): kept as it is
    assert trial_io.relative_to_experiment("/elsewhere/ckpt", exp_dir) == "/elsewhere/ckpt"
    assert trial_io.relative_to_experiment(str(tmp_path / "storage" / "exp2" / "c"), exp_dir) == str(
        tmp_path / "storage" / "exp2" / "c")
    assert trial_io.relative_to_experiment("", exp_dir) == ""


def test_a_relative_storage_path_and_a_linked_folder_still_compare(tmp_path, monkeypatch):
    real = tmp_path / "real" / "exp"
    (real / "train").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # Ray reports absolute paths; --storage-path may be relative to the working folder
    assert trial_io.relative_to_experiment(str(real / "train" / "c"), "real/exp") == "train/c"
    os.symlink(tmp_path / "real", tmp_path / "link")
    assert trial_io.relative_to_experiment(str(real / "train" / "c"), tmp_path / "link" / "exp") == "train/c"


def test_a_relative_checkpoint_is_found_in_the_folder_the_experiment_is_in_now(tmp_path, digits):
    exp_dir = tmp_path / "exp"
    _checkpoint(exp_dir / "train" / "t1" / "checkpoint_000002", digits.spec)
    stored = "train/t1/checkpoint_000002"
    assert trial_io.checkpoint_folder(exp_dir, stored) == exp_dir / stored
    moved = tmp_path / "somewhere" / "else"
    shutil.move(exp_dir, moved)
    assert trial_io.checkpoint_folder(moved, stored) == moved / stored
    assert trial_io.checkpoint_folder(exp_dir, stored) is None
    assert trial_io.checkpoint_folder(moved, "") is None and trial_io.checkpoint_folder(moved, None) is None


def test_absolute_paths_of_older_results_still_work_also_after_a_move(tmp_path, digits):
    exp_dir = tmp_path / "storage" / "exp"
    folder = exp_dir / "train" / "t1" / "checkpoint_000002"
    _checkpoint(folder, digits.spec)
    assert trial_io.checkpoint_folder(exp_dir, str(folder)) == folder  # as recorded
    moved = tmp_path / "moved"
    shutil.move(exp_dir, moved)
    # the recorded path is gone: its tail is found below the experiment's new folder
    assert trial_io.checkpoint_folder(moved, str(folder)) == moved / "train" / "t1" / "checkpoint_000002"
    # relative to the search's working folder (an old relative --storage-path)
    assert trial_io.checkpoint_folder(moved, "storage/exp/train/t1/checkpoint_000002") == (
        moved / "train" / "t1" / "checkpoint_000002")
    assert trial_io.checkpoint_folder(moved, str(tmp_path / "nowhere" / "checkpoint_000009")) is None
