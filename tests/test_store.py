import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch import store
from raysearch.schema import SCHEMA_VERSION


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
