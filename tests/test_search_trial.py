"""One trial of a search (raysearch.search.trial): what its Train workers are given. A MO-PBT
clone's Train run is in test_search_mopbt; a trial run for real is in test_tune."""
from __future__ import annotations

import pickle

from raysearch.config import ExperimentConfig
from raysearch.search.trial import loop_config
from tests.conftest import python_c


def test_the_train_controller_unpickles_the_loop_config_without_torch(tmp_path):
    # every trial's Train controller (a fresh process) unpickles the loop config; importing torch
    # there would cost every trial ≈ 1.8 s of start-up
    exp = ExperimentConfig(method="pgd_at", sets=(("attack_steps", 2),), storage_path=str(tmp_path), name="e")
    (tmp_path / "loop.pkl").write_bytes(pickle.dumps(loop_config(exp, {"eps_train": 0.1}, "t1")))
    code = ("import pickle, sys; import ray.train.v2.api.data_parallel_trainer; "
            f"cfg = pickle.loads(open({str(tmp_path / 'loop.pkl')!r}, 'rb').read()); "
            "print(repr(cfg['experiment']), cfg['sampled'], cfg['trial_id']); "
            "print(sorted(m for m in ('torch', 'trainables', 'ray.train.torch') if m in sys.modules))")
    out = python_c(code)
    lines = out.strip().splitlines()
    assert lines[0] == f"{exp!r} {{'eps_train': 0.1}} t1"  # the experiment config itself, whole
    assert lines[-1] == "[]"
