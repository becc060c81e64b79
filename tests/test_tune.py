"""The command line (raysearch.tune). Bad input: one clear line on stderr, exit code 2, no
traceback, nothing written, and no Ray. A search end to end on a real local Ray (dashboard on),
real Optuna, real Parquet."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch import store, tune
from raysearch.pareto import hypervolume_2d, pareto_mask
from raysearch.schema import Status
from tests.conftest import ROOT, run_cli

# ---------------------------------------------------------------- bad input

CASES = [
    (["--method", "nope"], "known: standard"),
    (["--method", "pgd_at", "--dataset", "mnist"], "unknown dataset"),
    (["--method", "pgd_at", "--arch", "vgg"], "unknown architecture"),
    (["--method", "pgd_at", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["--method", "pgd_at", "--num-samples", "many"], "invalid int value"),
    (["--method", "pgd_at", "--eps-eval", "-0.1"], "--eps-eval"),
    (["--method", "pgd_at", "--set", "eps_train=-0.1"], "must not be negative"),
    (["--method", "pgd_at", "--set", "eps_train"], "key=value"),
    (["--method", "pgd_at", "--set", "eps_train='big'"], "expected float"),
    (["--method", "pgd_at", "--set", "beta=3"], "has no such field"),
    (["--method", "pgd_at", "--sampler", "cmaes"], "unknown sampler"),
    (["--method", "pgd_at", "--scheduler", "hyperband"], "unknown scheduler 'hyperband'; known: none, asha"),
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
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2", "False", "False"]


def test_missing_dataset_offline_says_where_to_put_it(tmp_path):
    proc = run_cli("--method", "pgd_at", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "--download" in line and str(tmp_path / "none") in line


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
    assert len(df) == 3 and set(df.status) == {Status.COMPLETED}
    assert trials.schema.field("clean_acc").type == pa.float64()
    assert trials.schema.field("hp_eps_train").type == pa.float64()
    assert trials.schema.field("hp_attack_steps").type == pa.int64()
    assert (df.epochs == 2).all() and (df.wall_s > 0).all() and (df.device_s >= df.wall_s).all()
    assert df.clean_acc.between(0, 1).all() and (df.robust_acc <= df.clean_acc + 1e-9).all()
    # searched hyperparameters differ between trials; fixed ones do not
    assert df.hp_eps_train.nunique() > 1 and df.hp_epochs.nunique() == 1

    ev = evals.to_pandas()
    proxy = ev[ev.stage == "trial"]
    assert set(proxy.threat) == {"clean", "seen"} and len(proxy) == 3 * 2 * 2  # trials × epochs × (clean, pgd)
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


@pytest.mark.slow
def test_optuna_study_recorded_every_trial(results_root):
    db = results_root / "tiny-pgd_at" / "optuna.db"
    with sqlite3.connect(db) as con:
        states = [r[0] for r in con.execute("select state from trials")]
    assert states.count("COMPLETE") == 3


@pytest.mark.slow
def test_two_ddp_workers_train_one_trial(tmp_path):
    proc = run_cli("--method", "trades", "--workers-per-trial", "2", "--num-samples", "1", "--max-epochs", "1",
                   "--eval-size", "60", "--no-final-eval", "--storage-path", str(tmp_path), "--name", "ddp")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = store.read_rows(tmp_path / "ddp" / store.TRIALS)[0]
    assert row["status"] == Status.COMPLETED and row["num_workers"] == 2
    assert row["device_s"] == pytest.approx(2 * row["wall_s"])
    ev = [r for r in store.read_rows(tmp_path / "ddp" / store.EVALS) if r["attack"] == "clean"]
    assert ev[0]["n"] == 60  # the two ranks' shards add up to the whole subset
    assert not math.isnan(row["clean_acc"])
