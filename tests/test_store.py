"""raysearch.store: typed, atomic writes of the results files, the derived interval columns, and
conform for readers."""
from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch import store
from raysearch.schema import SCHEMA_VERSION
from raysearch.stats import wilson


def test_trials_are_typed_and_hyperparameters_get_their_own_columns(tmp_path):
    rows = [
        {"trial_id": "a", "method": "trades", "status": "completed", "clean_acc": 0.9, "robust_acc": 0.5,
         "epochs": 3, "hp_beta": 6.0, "hp_attack_steps": 10, "hp_arch": "auto"},
        {"trial_id": "b", "method": "trades", "status": "failed", "error": "diverged", "clean_acc": None,
         "hp_beta": 2, "hp_attack_steps": 5, "hp_arch": "auto"},
    ]
    store.write_trials(tmp_path, rows)
    t = pq.read_table(tmp_path / store.TRIALS)
    assert t.schema.field("clean_acc").type == pa.float64()
    assert t.schema.field("epochs").type == pa.int64()
    assert t.schema.field("hp_beta").type == pa.float64()  # an int among floats stays a float column
    assert t.schema.field("hp_attack_steps").type == pa.int64()
    assert t.schema.field("hp_arch").type == pa.string()
    back = store.read_rows(tmp_path / store.TRIALS)
    assert back[0]["hp_beta"] == 6.0 and back[1]["hp_beta"] == 2.0
    assert math.isnan(back[1]["clean_acc"]) and back[1]["error"] == "diverged"
    assert back[0]["schema_version"] == SCHEMA_VERSION


def test_a_crash_while_writing_leaves_the_old_file_whole(tmp_path):
    store.write_evals(tmp_path, [{"trial_id": "a", "attack": "clean", "accuracy": 0.9}])  # partial rows are fine

    class Boom(Exception):
        pass

    def half_write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"PAR1 half a file")
        raise Boom

    with pytest.raises(Boom):
        store.atomic_write_bytes(tmp_path / store.EVALS, half_write)
    assert store.read_rows(tmp_path / store.EVALS)[0]["accuracy"] == 0.9
    assert [p.name for p in tmp_path.iterdir()] == [store.EVALS]  # no temporary left behind


def test_json_is_written_atomically_and_readable(tmp_path):
    store.write_json(tmp_path / "x.json", {"a": 1, "b": [1.5]})
    assert (tmp_path / "x.json").read_text().startswith("{")


def test_the_store_derives_each_accuracys_wilson_interval_from_it_and_its_n(tmp_path):
    """evals: ``accuracy`` on ``n`` images; a per-call accuracy (0.575 of 100) is not rounded."""
    store.write_evals(tmp_path, [{"trial_id": "a", "attack": "clean", "accuracy": 0.9, "n": 100},
                                 {"trial_id": "a", "attack": "pgd", "accuracy": 0.575, "n": 100},
                                 {"trial_id": "b", "attack": "clean", "accuracy": 0.9},  # no n
                                 {"trial_id": "b", "attack": "pgd", "accuracy": None, "n": 100},
                                 {"trial_id": "b", "attack": "none", "accuracy": 0.0, "n": 0}])
    rows = store.read_rows(tmp_path / store.EVALS)
    assert (rows[0]["accuracy_low"], rows[0]["accuracy_high"]) == wilson(90, 100)
    assert (rows[1]["accuracy_low"], rows[1]["accuracy_high"]) == wilson(57.5, 100) != wilson(58, 100)
    for row in rows[2:]:
        assert math.isnan(row["accuracy_low"]) and math.isnan(row["accuracy_high"])


def test_trials_intervals_pair_the_proxy_with_eval_n_and_the_final_suite_with_final_n(tmp_path):
    store.write_trials(tmp_path, [
        {"trial_id": "a", "clean_acc": 0.95, "robust_acc": 0.5, "eval_n": 180, "final_clean_acc": 0.9,
         "final_worst_seen": 0.4, "final_union_unseen": 0.2, "final_n": 360},
        {"trial_id": "b", "clean_acc": 0.95, "robust_acc": None, "eval_n": 180},  # running: no final suite yet
    ])
    table = pq.read_table(tmp_path / store.TRIALS)
    assert table.schema.field("eval_n").type == pa.int64() and table.schema.field("clean_acc_low").type == pa.float64()
    a, b = store.read_rows(tmp_path / store.TRIALS)
    for column, n in (("clean_acc", 180), ("robust_acc", 180), ("final_clean_acc", 360), ("final_worst_seen", 360),
                      ("final_union_unseen", 360)):
        assert (a[f"{column}_low"], a[f"{column}_high"]) == wilson(a[column] * n, n), column
        assert a[f"{column}_low"] < a[column] < a[f"{column}_high"]
    assert (b["clean_acc_low"], b["clean_acc_high"]) == wilson(0.95 * 180, 180)
    assert all(math.isnan(b[c]) for c in ("robust_acc_low", "robust_acc_high", "final_worst_seen_low"))


def test_a_writers_interval_is_recomputed_from_the_current_accuracy(tmp_path):
    """Rows read back carry their intervals; an accuracy updated since (the next epoch) gets a
    new one, whatever the row still held."""
    store.write_trials(tmp_path, [{"trial_id": "a", "clean_acc": 0.5, "eval_n": 100}])
    (row,) = store.read_rows(tmp_path / store.TRIALS)
    row.update(clean_acc=0.8)
    store.write_trials(tmp_path, [{**row, "robust_acc_low": 0.99}])
    (row,) = store.read_rows(tmp_path / store.TRIALS)
    assert (row["clean_acc_low"], row["clean_acc_high"]) == wilson(80, 100)
    assert math.isnan(row["robust_acc_low"])


def test_conform_gives_an_older_files_n_and_interval_columns_as_missing(tmp_path):
    """A file written before the intervals existed: every declared column comes back, its n and
    intervals NaN."""
    old = pa.table({"trial_id": ["a"], "clean_acc": [0.9], "robust_acc": [0.4]})
    pq.write_table(old, tmp_path / store.TRIALS)
    frame = store.conform(store.read_frame(tmp_path / store.TRIALS), "trials")
    for column in ("eval_n", "final_n", "clean_acc_low", "clean_acc_high", "final_worst_seen_high"):
        assert column in frame and frame[column].isna().all(), column
    assert frame["clean_acc"].item() == 0.9
    evals = store.conform(pd.DataFrame({"trial_id": ["a"], "accuracy": [0.5]}), "evals")
    assert evals[["n", "accuracy_low", "accuracy_high"]].isna().all().all()
