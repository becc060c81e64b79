"""The results schema: one declaration of every column, rows built and checked through it."""
import math

import pyarrow as pa
import pytest

from raysearch import schema, store
from raysearch.schema import Stage, Status, Threat


def _eval(**changes):
    fields = dict(experiment="e", trial_id="t", method="pgd_at", dataset="digits", stage=Stage.FINAL,
                  epoch=schema.FINAL_EPOCH, attack="pgd_ce", family="pgd", threat=Threat.SEEN, norm="linf",
                  eps=0.2, accuracy=0.5, n=100, eot_samples=1, scoring_calls=1, queries=0, restarts=5,
                  iterations=50, protocol="standard", seconds=1.5)
    return schema.eval_row(**{**fields, **changes})


def test_every_column_has_a_known_kind_a_doc_and_accuracies_are_fractions():
    for columns in (schema.TRIAL_COLUMNS, schema.EVAL_COLUMNS):
        for name, column in columns.items():
            assert column.kind in schema.KINDS and column.doc, name
    fractions = {n for n, c in schema.TRIAL_COLUMNS.items() if c.unit == schema.FRACTION}
    assert {"clean_acc", "robust_acc", "final_clean_acc", "final_worst_seen", "final_union_unseen"} <= fractions
    assert schema.EVAL_COLUMNS["accuracy"].unit == schema.FRACTION


def test_every_accuracy_names_its_n_and_has_derived_interval_columns():
    for kind, columns in (("trials", schema.TRIAL_COLUMNS), ("evals", schema.EVAL_COLUMNS)):
        measured = [name for name, c in columns.items() if c.unit == schema.FRACTION and not c.derived]
        assert measured and all(columns[name].n for name in measured), kind  # no accuracy without its n
        for interval in schema.intervals(kind):
            assert columns[interval.n].kind == "int" and not columns[interval.n].derived
            assert (interval.low, interval.high) == schema.interval_names(interval.accuracy)
            for end in (interval.low, interval.high):
                assert columns[end].derived and columns[end].kind == "float" and columns[end].unit == schema.FRACTION
        assert {i.accuracy for i in schema.intervals(kind)} == set(measured)
        assert {n for n, c in columns.items() if c.derived} == {
            end for i in schema.intervals(kind) for end in (i.low, i.high)}
    assert schema.intervals("evals") == [schema.Interval("accuracy", "n", "accuracy_low", "accuracy_high")]
    pairs = {i.accuracy: i.n for i in schema.intervals("trials")}
    assert pairs == {"clean_acc": "eval_n", "robust_acc": "eval_n", "final_clean_acc": "final_n",
                     "final_worst_seen": "final_n", "final_union_unseen": "final_n"}


def test_a_row_read_back_with_its_interval_columns_fits_the_schema():
    row = {**_eval(), "accuracy_low": 0.4, "accuracy_high": 0.6}  # as store.read_rows returns it
    schema.check_row(row, "evals")
    assert "accuracy_low" not in _eval()  # the constructor leaves the derived columns to the store


def test_a_new_trial_row_has_every_column_and_its_hyperparameters():
    row = schema.trial_row(experiment="e", trial_id="t", method="trades", dataset="digits", arch="auto",
                           eps_eval=0.2, num_workers=1, started_at=1.0,
                           config={"beta": 6.0, "attack_steps": 10, "arch": "auto", "skip": (1, 2)})
    assert set(schema.TRIAL_COLUMNS) <= set(row)
    assert row["status"] == Status.RUNNING == "running" and row["epochs"] == 0 and row["stopped_early"] is False
    assert row["hp_beta"] == 6.0 and row["hp_attack_steps"] == 10 and "hp_skip" not in row
    assert math.isnan(row["clean_acc"]) and row["error"] is None
    assert row["eval_n"] is None and row["final_n"] is None and math.isnan(row["clean_acc_low"])


def test_an_undeclared_column_or_an_accuracy_outside_0_1_is_refused(tmp_path):
    with pytest.raises(schema.SchemaError, match="not declared"):
        store.write_evals(tmp_path, [{**_eval(), "robust_accuracy": 0.4}])
    with pytest.raises(schema.SchemaError, match="not declared"):
        store.write_trials(tmp_path, [{"trial_id": "a", "clean": 0.9}])
    with pytest.raises(schema.SchemaError, match="fraction"):
        _eval(accuracy=41.0)  # a percentage where a fraction belongs
    store.write_trials(tmp_path, [{"trial_id": "a", "hp_beta": 6.0}])  # hyperparameters are open-ended
    assert not (tmp_path / store.EVALS).exists()  # nothing half-written by the refused writes


def test_vocabularies_refuse_unknown_values():
    with pytest.raises(ValueError):
        _eval(stage="epoch")
    with pytest.raises(ValueError):
        _eval(threat="seen_ish")


def test_written_files_carry_the_declared_types(tmp_path):
    store.write_evals(tmp_path, [_eval()])
    table = store.read_table(tmp_path / store.EVALS)
    for name, column in schema.EVAL_COLUMNS.items():
        assert table.schema.field(name).type == store.arrow_type(name, column), name
    assert table.schema.field("accuracy").type == pa.float64()
    assert store.read_rows(tmp_path / store.EVALS)[0]["threat"] == "seen"


@pytest.mark.slow
def test_a_search_writes_every_declared_column_and_nothing_else(results_root):
    """The real CLI's files: no column outside the schema, and every declared column written
    somewhere (``error`` only on failed trials, whose rows the fault tests read)."""
    only_on_failure = {"error"}
    for exp_dir in sorted(p for p in results_root.iterdir() if p.is_dir()):
        for fname, columns, kind in ((store.TRIALS, schema.TRIAL_COLUMNS, "trials"),
                                     (store.EVALS, schema.EVAL_COLUMNS, "evals")):
            frame = store.read_frame(exp_dir / fname)
            extra = set(frame.columns) - set(columns)
            if kind == "trials":
                extra -= set(schema.hp_columns(frame.columns))
            assert not extra, (exp_dir.name, fname, extra)
            never = [c for c in columns if c not in only_on_failure and frame[c].isna().all()]
            assert not never, (exp_dir.name, fname, never)


def test_evals_rows_say_how_they_were_measured_and_older_files_still_read(tmp_path):
    """queries, restarts, iterations and protocol are required of every evals row, protocol from
    its vocabulary; a file written before them (schema 2) reads with them missing, as does a
    trials file without masking_checks."""
    import pandas as pd

    row = _eval(protocol="rand", queries=1000, restarts=1, iterations=0)
    assert row["protocol"] == schema.Protocol.RAND == "rand" and row["queries"] == 1000
    with pytest.raises(ValueError):
        _eval(protocol="ensemble")
    fields = {k: v for k, v in _eval().items() if k not in ("schema_version", "protocol")}
    with pytest.raises(TypeError, match="protocol"):
        schema.eval_row(**fields)
    assert schema.SCHEMA_VERSION == 3 and schema.TRIAL_COLUMNS["masking_checks"].kind == "str"
    store.write_evals(tmp_path, [row])
    assert store.read_rows(tmp_path / store.EVALS)[0]["protocol"] == "rand"
    old = store.conform(pd.DataFrame({"trial_id": ["a"], "accuracy": [0.5], "eot_samples": [20]}), "evals")
    assert old[["queries", "restarts", "iterations"]].isna().all().all() and old["protocol"].tolist() == [""]
    old_trials = store.conform(pd.DataFrame({"trial_id": ["a"], "masking_flags": [""]}), "trials")
    assert old_trials["masking_checks"].tolist() == [""]
