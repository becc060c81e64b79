"""The command line (raysearch.tune). Bad input: one clear line on stderr, exit code 2, no
traceback, nothing written, and no Ray. A search end to end on a real local Ray (dashboard on),
real Optuna, real Parquet."""
from __future__ import annotations

import json
import math
import shutil
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch import store, tune
from raysearch.evaluate import candidates
from raysearch.pareto import hypervolume_2d, pareto_mask
from raysearch.schema import Status
from tests.conftest import TINY_TRIALS, python_c, run_cli

# ---------------------------------------------------------------- bad input

CASES = [
    (["--method", "nope"], "known: standard"),
    (["--method", "pgd_at", "--dataset", "imagenet"], "unknown dataset"),
    (["--method", "pgd_at", "--dataset", "xyz:data.bin"], "unknown kind of data set 'xyz'"),
    (["--method", "pgd_at", "--dataset", "npz:/no/such/file.npz", "--eps-eval", "0.1"], "no such file"),
    (["--method", "pgd_at", "--arch", "vgg"], "unknown architecture"),
    (["--method", "pgd_at", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["--method", "pgd_at", "--num-samples", "many"], "invalid int value"),
    (["--method", "pgd_at", "--eps-eval", "-0.1"], "--eps-eval"),
    (["--method", "pgd_at", "--eps-list", "0.1", "1.5"], "--eps-list: every radius must be in (0, 1]"),
    (["--method", "pgd_at", "--eps-list", "0"], "--eps-list: every radius must be in (0, 1]"),
    (["--method", "pgd_at", "--eps-list", "big"], "invalid float value"),
    (["--method", "pgd_at", "--arch", "no_such_module_xyz:make"], "no_such_module_xyz"),
    (["--method", "pgd_at", "--set", "eps_train=-0.1"], "must not be negative"),
    (["--method", "pgd_at", "--set", "eps_train"], "key=value"),
    (["--method", "pgd_at", "--set", "eps_train='big'"], "expected float"),
    (["--method", "pgd_at", "--set", "beta=3"], "has no such field"),
    (["--method", "pgd_at", "--sampler", "cmaes"], "unknown sampler"),
    (["--method", "pgd_at", "--scheduler", "hyperband"], "unknown scheduler 'hyperband'; known: none, moasha, mopbt"),
    (["--method", "pgd_at", "--scheduler", "mopbt", "--num-samples", "1"], "needs a population"),
    (["--method", "pgd_at", "--scheduler", "mopbt", "--max-epochs", "3", "--perturbation-interval", "3"],
     "--perturbation-interval must be at least 1 and below --max-epochs (3)"),
    (["--method", "pgd_at", "--final-candidates", "best"],
     "--final-candidates must be front, band, all or a whole number K >= 1, got 'best'"),
    (["--method", "pgd_at", "--final-candidates", "0"], "--final-candidates must be"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(c[0][2:]) for c in CASES])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    # in-process through the real entry point; the subprocess path is covered below
    try:
        code = tune.main([*args, "--storage-path", str(tmp_path / "r")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "r").exists()


def test_a_subprocess_sees_the_same_single_line(tmp_path):
    proc = run_cli("--method", "nope", timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_checking_the_arguments_imports_no_ray(tmp_path):
    code = ("import sys; from raysearch import tune; "
            f"code = tune.main(['--method', 'pgd_at', '--num-samples', '0', '--storage-path', {str(tmp_path)!r}]); "
            "print(code, 'ray' in sys.modules, 'optuna' in sys.modules)")
    out = python_c(code)
    assert out.split() == ["2", "False", "False"]


def test_missing_dataset_offline_says_where_to_put_it(tmp_path):
    proc = run_cli("--method", "pgd_at", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "--download" in line and str(tmp_path / "none") in line


def synthetic_npz(path, n_train=600, n_test=200, size=28, classes=10, seed=0):
    """A learnable 1-channel data set: class k is a bright square at its own place on noise."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 60, (n, size, size, 1), dtype=np.uint8)
        for k in range(classes):
            row, col = (k // 4) * (size // 4) + 2, (k % 4) * (size // 4) + 2
            x[y == k, row:row + size // 5, col:col + size // 5] = 230
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    np.savez(path, **arrays)
    return path


def test_a_users_data_set_without_eps_eval_is_one_line_and_exit_2(tmp_path):
    data_file = synthetic_npz(tmp_path / "set.npz", n_train=20, n_test=5)
    proc = run_cli("--method", "pgd_at", "--dataset", f"npz:{data_file}", "--storage-path", str(tmp_path / "r"),
                   timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--eps-eval" in proc.stderr and str(data_file) in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("broken,needle", [
    ({"y_test": None}, "has no y_test"),
    ({"y_test": np.full(5, 12)}, "a test label is 12"),
    ({"x_train": np.zeros((20, 28, 27, 1), np.uint8)}, "square images"),
], ids=["missing-key", "label-out-of-range", "not-square"])
def test_bad_user_data_is_one_line_and_exit_2(tmp_path, capsys, broken, needle):
    arrays = dict(np.load(synthetic_npz(tmp_path / "set.npz", n_train=20, n_test=5)))
    arrays.update(broken)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    code = tune.main(["--method", "pgd_at", "--dataset", f"npz:{tmp_path / 'bad.npz'}", "--eps-eval", "0.1",
                      "--storage-path", str(tmp_path / "r")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "r").exists()


def test_a_users_data_set_is_recorded_by_absolute_path(tmp_path, monkeypatch):
    synthetic_npz(tmp_path / "digits28.npz", n_train=20, n_test=5)
    monkeypatch.chdir(tmp_path)
    args = tune.build_parser().parse_args(["--method", "pgd_at", "--dataset", "npz:digits28.npz", "--eps-eval", "0.1",
                                           "--eps-list", "0.2", "0.05", "--eps-list", "0.1", "0.2",
                                           "--storage-path", str(tmp_path / "r")])
    exp = tune.make_config(args)
    assert exp.dataset == f"npz:{tmp_path / 'digits28.npz'}" and exp.eps_eval == 0.1
    assert exp.name.startswith("pgd_at-npz-digits28-")
    assert exp.eps_list == (0.05, 0.1, 0.2)


def test_eps_list_defaults_to_none_and_builtin_names_are_kept(tmp_path):
    exp = tune.make_config(tune.build_parser().parse_args(["--method", "pgd_at", "--storage-path", str(tmp_path)]))
    assert exp.eps_list == () and exp.dataset == "digits" and exp.eps_eval == 0.2
    assert exp.name.startswith("pgd_at-digits-")


@pytest.mark.parametrize("method,given,rule", [("pgd_at", None, "band"), ("pgd_at", "front", "front"),
                                               ("pgd_at", "ALL", "all"), ("pgd_at", "05", "5"),
                                               ("atop", None, "front"), ("atop", "band", "band")])
def test_final_candidates_default_to_the_band_and_to_the_front_for_a_randomized_defense(tmp_path, method, given,
                                                                                        rule):
    flag = [] if given is None else ["--final-candidates", given]
    args = tune.build_parser().parse_args(["--method", method, "--storage-path", str(tmp_path), *flag])
    assert tune.make_config(args).final_candidates == rule


@pytest.mark.parametrize("method,given,size", [("pgd_at", None, 1000), ("atop", None, tune.RANDOMIZED_FINAL_SIZE),
                                               ("atop", "50", 50)])
def test_final_images_default_to_a_thousand_and_fewer_for_a_randomized_defense(tmp_path, method, given, size):
    flag = [] if given is None else ["--final-eval-size", given]
    args = tune.build_parser().parse_args(["--method", method, "--storage-path", str(tmp_path), *flag])
    assert tune.make_config(args).final_eval_size == size


def test_existing_name_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "keep.txt").write_text("x")
    assert tune.main(["--method", "pgd_at", "--storage-path", str(tmp_path), "--name", "exp"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "exp" / "keep.txt").read_text() == "x"
    assert tune.main(["--method", "pgd_at", "--storage-path", str(tmp_path), "--name", "other", "--resume"]) == 2
    assert "no experiment" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_asked_on_a_cluster_without_gpus_fails_at_once(tmp_path):
    proc = run_cli("--method", "pgd_at", "--gpus-per-worker", "1", "--storage-path", str(tmp_path), timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "no GPUs" in err[0], proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for a search that cannot start"


# ---------------------------------------------------------------- a search end to end

@pytest.mark.slow
def test_cli_search_writes_typed_results_and_prints_the_front(results_root):
    exp_dir = results_root / "tiny-pgd_at"
    out = (exp_dir / "cli_output.txt").read_text()
    trials = pq.read_table(exp_dir / store.TRIALS)
    evals = pq.read_table(exp_dir / store.EVALS)
    recorded = json.loads((exp_dir / store.EXPERIMENT).read_text())

    df = trials.to_pandas()
    assert len(df) == TINY_TRIALS and set(df.status) == {Status.COMPLETED}
    assert trials.schema.field("clean_acc").type == pa.float64()
    assert trials.schema.field("hp_eps_train").type == pa.float64()
    assert trials.schema.field("hp_attack_steps").type == pa.int64()
    assert (df.epochs == 2).all() and (df.wall_s > 0).all() and (df.device_s >= df.wall_s).all()
    assert df.clean_acc.between(0, 1).all() and (df.robust_acc <= df.clean_acc + 1e-9).all()
    # searched hyperparameters differ between trials; fixed ones do not
    assert df.hp_eps_train.nunique() > 1 and df.hp_epochs.nunique() == 1

    ev = evals.to_pandas()
    proxy = ev[ev.stage == "trial"]
    assert set(proxy.threat) == {"clean", "seen"} and len(proxy) == TINY_TRIALS * 2 * 2  # trials × epochs × (clean, pgd)
    last = proxy[(proxy.epoch == 2) & (proxy.threat == "seen")].set_index("trial_id").accuracy
    assert (last.sort_index() == df.set_index("trial_id").robust_acc.sort_index()).all()

    assert recorded["config"]["method"] == "pgd_at" and "eps_train" in recorded["search_space"]
    assert recorded["versions"]["ray"] and recorded["versions"]["optuna"]
    assert recorded["git_dirty"] in (True, False, None)

    # the printed front and hypervolume are the ones recomputed from the files
    pts = df[["clean_acc", "robust_acc"]].to_numpy()
    front_ids = set(df.trial_id[pareto_mask(pts)])
    assert f"hypervolume (reference point clean=0, robust=0): {hypervolume_2d(pts):.4f}" in out
    table = out.split("Pareto front:")[1].split("hypervolume")[0]
    assert {t for t in df.trial_id if t in table} == front_ids
    assert "streamlit run dashboard/app.py -- --results" in out and str(exp_dir) in out
    # evaluated on the front only: the band's other trials are named with the command that adds them
    left = candidates.band_left_out(store.read_rows(exp_dir / store.TRIALS),
                                    candidates.select(store.read_rows(exp_dir / store.TRIALS), "front"))
    said = [line for line in out.splitlines() if "not evaluated:" in line]
    if left:
        assert len(said) == 1 and said[0].endswith(f"--only-trials --trials {' '.join(left)}"), said
    else:
        assert said == []


@pytest.mark.slow
def test_a_final_evaluation_that_fails_says_why_and_reports_the_failure(results_root, tmp_path, capsys):
    """The search's exit code comes from here: a final evaluation that cannot evaluate its
    candidates (their checkpoints gone: the results files copied without them) prints one line
    on stderr and returns False, and writes nothing over the stored results."""
    from raysearch.config import ExperimentConfig
    from raysearch.search.final import final_evaluation

    src, dst = results_root / "tiny-pgd_at", tmp_path / "tiny-pgd_at"
    dst.mkdir()
    for name in (store.TRIALS, store.EVALS, store.EXPERIMENT):
        shutil.copy(src / name, dst / name)
    before = {name: (dst / name).read_bytes() for name in (store.TRIALS, store.EVALS)}
    exp = ExperimentConfig(method="pgd_at", storage_path=str(tmp_path), name="tiny-pgd_at", final_eval_size=40,
                           final_candidates="front")
    assert final_evaluation(exp) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("final evaluation failed:") and "checkpoint" in err[0], err
    assert {name: (dst / name).read_bytes() for name in before} == before


@pytest.mark.slow
def test_optuna_study_recorded_every_trial(results_root):
    db = results_root / "tiny-pgd_at" / "optuna.db"
    with sqlite3.connect(db) as con:
        states = [r[0] for r in con.execute("select state from trials")]
    assert states.count("COMPLETE") == TINY_TRIALS


@pytest.mark.slow
def test_a_search_on_a_generated_28px_npz_runs_end_to_end(tmp_path):
    data_file = synthetic_npz(tmp_path / "shapes28.npz", n_train=400, n_test=40)  # 360 train, 40 validation
    # a radius large enough that the attacks fool every image soon: the gradient-free attack does
    # not spend its whole query budget on robust images (the final suite here shows the data
    # path at 28 px, not robustness)
    eps = 0.3
    proc = run_cli("--method", "pgd_at", "--dataset", f"npz:{data_file}", "--eps-eval", str(eps),
                   "--num-samples", "1", "--max-epochs", "1", "--eval-size", "40", "--final-eval-size", "10",
                   "--final-candidates", "1", "--set", "attack_steps=3", "--storage-path", str(tmp_path / "r"), "--name", "npz")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp_dir = tmp_path / "r" / "npz"
    trials = store.read_rows(exp_dir / store.TRIALS)
    assert len(trials) == 1 and {r["status"] for r in trials} == {Status.COMPLETED}
    assert {r["dataset"] for r in trials} == {f"npz:{data_file}"} and {r["eps_eval"] for r in trials} == {eps}
    recorded = json.loads((exp_dir / store.EXPERIMENT).read_text())
    spec = recorded["data_spec"]
    assert (spec["channels"], spec["size"], spec["classes"], spec["eps_eval"]) == (1, 28, 10, eps)
    assert spec["eps_eval_l2"] == pytest.approx(eps * 28 * 0.5 / (8 / 255 * math.sqrt(3 * 32 * 32)))
    assert spec["name"] == recorded["config"]["dataset"] == f"npz:{data_file}"
    final = [r for r in store.read_rows(exp_dir / store.EVALS) if r["stage"] == "final"]
    assert final and all(r["n"] == 10 for r in final if r["attack"] == "clean"), proc.stderr[-2000:]
    assert "final evaluation failed" not in proc.stderr
