"""The command line end to end on a real local Ray (dashboard on), real Optuna, real Parquet."""
from __future__ import annotations

import json
import math
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch import store
from raysearch.pareto import hypervolume_2d, pareto_mask
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_cli_search_writes_typed_results_and_prints_the_front(results_root):
    exp = results_root / "tiny-pgd_at"
    out = (exp / "cli_output.txt").read_text()
    trials = pq.read_table(exp / store.TRIALS)
    evals = pq.read_table(exp / store.EVALS)
    meta = json.loads((exp / store.EXPERIMENT).read_text())

    df = trials.to_pandas()
    assert len(df) == 3 and set(df.status) == {store.COMPLETED}
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

    assert meta["config"]["method"] == "pgd_at" and "eps_train" in meta["search_space"]
    assert meta["versions"]["ray"] and meta["versions"]["optuna"]

    # the printed front and hypervolume are the ones recomputed from the files
    pts = df[["clean_acc", "robust_acc"]].to_numpy()
    front_ids = set(df.trial_id[pareto_mask(pts)])
    assert f"hypervolume (reference point clean=0, robust=0): {hypervolume_2d(pts):.4f}" in out
    table = out.split("Pareto front:")[1].split("hypervolume")[0]
    assert {t for t in df.trial_id if t in table} == front_ids
    assert "streamlit run dashboard/app.py -- --results" in out and str(exp) in out


def test_optuna_study_recorded_every_trial(results_root):
    db = results_root / "tiny-pgd_at" / "optuna.db"
    with sqlite3.connect(db) as con:
        states = [r[0] for r in con.execute("select state from trials")]
    assert states.count("COMPLETE") == 3


def test_two_ddp_workers_train_one_trial(tmp_path):
    proc = run_cli("--method", "trades", "--workers-per-trial", "2", "--num-samples", "1", "--max-epochs", "1",
                   "--eval-size", "60", "--no-final-eval", "--storage-path", str(tmp_path), "--name", "ddp")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = store.read_rows(tmp_path / "ddp" / store.TRIALS)[0]
    assert row["status"] == store.COMPLETED and row["num_workers"] == 2
    assert row["device_s"] == pytest.approx(2 * row["wall_s"])
    ev = [r for r in store.read_rows(tmp_path / "ddp" / store.EVALS) if r["attack"] == "clean"]
    assert ev[0]["n"] == 60  # the two ranks' shards add up to the whole subset
    assert not math.isnan(row["clean_acc"])
