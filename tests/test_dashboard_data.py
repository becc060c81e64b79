"""The dashboard's pure loaders and tables, on results folders written through raysearch.store
(several methods, hp_* columns, per-epoch and final rows, a failed and a running trial) and on
missing, partial, corrupt and escaping files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard import data
from raysearch import store
from raysearch.pareto import hypervolume_2d, pareto_mask

# the final suite as raysearch.evaluate writes it: single attacks, per-family worst cases
# ("worst_<family>"), worst_seen / union_unseen and other aggregates (norm "mixed"), ε-sweep checks
SEEN = [("fgsm", "fgsm", "linf"), ("pgd_ce", "pgd", "linf"), ("pgd_cw", "pgd", "linf"), ("apgd_ce", "apgd", "linf"),
        ("apgd_dlr", "apgd", "linf"), ("square", "square", "linf")]
UNSEEN = [("pgd_l2", "pgd_l2", "l2"), ("stadv", "stadv", "flow"), ("recolor", "recolor", "colour"),
          ("jpeg", "jpeg", "dct"), ("gaussian_noise_s3", "corruption", "none"), ("blur_s3", "corruption", "none")]
CHECKS = [("pgd_eps_x0.5", 0.9), ("pgd_eps_x2", 0.3), ("pgd_unbounded", 0.0)]
HP = {"pgd_at": {"eps_train": (0.05, 0.3), "attack_steps": (3, 10), "lr": (0.01, 0.2)},
      "trades": {"eps_train": (0.05, 0.3), "beta": (0.5, 12.0), "lr": (0.01, 0.2)},
      "standard": {"lr": (0.005, 0.2), "weight_decay": (1e-5, 1e-3)}}


def write_experiment(root: Path, method: str, n: int = 6, seed: int = 0, final: bool = True,
                     failed: bool = True, running: bool = False, name: str | None = None,
                     t0: float = 1.7e9) -> Path:
    """One experiment folder as a search writes it: trials with a clean/robust trade-off driven
    by eps_train, per-epoch proxy rows, and the final suite on the trials of the front."""
    rng = np.random.default_rng(seed)
    name = name or f"{method}-digits"
    exp_dir = root / name
    space = HP[method]
    trials, evals = [], []
    epochs = 3
    for i in range(n):
        hp = {}
        for k, (lo, hi) in space.items():
            hp[f"hp_{k}"] = int(rng.integers(lo, hi + 1)) if isinstance(lo, int) else float(rng.uniform(lo, hi))
        strength = hp.get("hp_eps_train", 0.0) / 0.3 if method != "standard" else 0.0
        clean = float(np.clip(0.99 - 0.25 * strength - rng.uniform(0, 0.05), 0, 1))
        robust = float(np.clip(0.05 + 0.6 * strength - rng.uniform(0, 0.08), 0, 1))
        status = store.COMPLETED
        if failed and i == n - 1:
            status = store.FAILED
        if running and i == n - 2:
            status = store.RUNNING
        tid = f"{method[:4]}_{i:05d}"
        row = {"experiment": name, "trial_id": tid, "method": method, "dataset": "digits", "arch": "small_cnn",
               "status": status, "error": "RuntimeError: loss is NaN" if status == store.FAILED else "",
               "clean_acc": clean if status == store.COMPLETED else None,
               "robust_acc": robust if status == store.COMPLETED else None,
               "eps_eval": 0.2, "epochs": epochs if status == store.COMPLETED else 1,
               "wall_s": 10.0 + i, "device_s": 10.0 + i, "num_workers": 1, "nodes": "127.0.0.1",
               "started_at": t0 + 20 * i, "finished_at": t0 + 20 * i + 15 if status != store.RUNNING else None, **hp}
        trials.append(row)
        last = epochs if status != store.FAILED else 1
        for ep in range(1, last + 1):
            frac = ep / epochs
            for attack, threat, acc in (("clean", "clean", clean * (0.8 + 0.2 * frac)),
                                        ("pgd20_linf", "seen", robust * (0.7 + 0.3 * frac))):
                evals.append({"experiment": name, "trial_id": tid, "method": method, "dataset": "digits",
                              "stage": "trial", "epoch": ep, "attack": attack, "family": attack.split("20")[0],
                              "threat": threat, "norm": "linf" if threat == "seen" else "none",
                              "eps": 0.2 if threat == "seen" else None, "accuracy": acc, "n": 200,
                              "eot_samples": 1, "seconds": 0.5})
    if final:
        done = [t for t in trials if t["status"] == store.COMPLETED]
        mask = pareto_mask([[t["clean_acc"], t["robust_acc"]] for t in done])
        for t, on in zip(done, mask):
            if not on:
                continue
            base = {"experiment": name, "trial_id": t["trial_id"], "method": method, "dataset": "digits",
                    "stage": "final", "epoch": -1, "n": 1000, "eot_samples": 1, "seconds": 2.0}
            evals.append({**base, "attack": "clean", "family": "clean", "threat": "clean", "norm": "none",
                          "eps": None, "accuracy": t["clean_acc"] - 0.005})
            accs = {}
            for j, (attack, fam, norm) in enumerate(SEEN):
                accs[attack] = ("seen", fam, max(0.0, t["robust_acc"] - 0.01 * j))
            for j, (attack, fam, norm) in enumerate(UNSEEN):
                accs[attack] = ("unseen", fam, max(0.0, 0.6 * t["robust_acc"] + 0.02 * j))
            norms = dict((a, n) for a, _, n in SEEN + UNSEEN)
            for attack, (threat, fam, acc) in accs.items():
                evals.append({**base, "attack": attack, "family": fam, "threat": threat, "norm": norms[attack],
                              "eps": 0.2 if threat == "seen" else None, "accuracy": acc})
            for attack, factor in CHECKS:
                evals.append({**base, "attack": attack, "family": "eps_sweep", "threat": "check", "norm": "linf",
                              "eps": 0.2, "accuracy": t["robust_acc"] * factor})
            # per-image worst cases lie a little below the worst single attack
            aggregates = {f"worst_{fam}": (fam, threat, min(a for th, f, a in accs.values() if f == fam) - 0.003)
                          for threat, fam, _ in accs.values()}
            aggregates["worst_seen"] = ("worst_seen", "seen", min(a for th, _, a in accs.values() if th == "seen") - 0.005)
            aggregates["union_unseen"] = ("union_unseen", "unseen",
                                          min(a for th, _, a in accs.values() if th == "unseen") - 0.01)
            aggregates["union_unseen_adversarial"] = ("union_unseen", "unseen", aggregates["union_unseen"][2] + 0.004)
            aggregates["mean_corruption"] = ("corruption", "unseen", float(np.mean(
                [a for _, f, a in accs.values() if f == "corruption"])))
            for attack, (fam, threat, acc) in aggregates.items():
                evals.append({**base, "attack": attack, "family": fam, "threat": threat, "norm": "mixed",
                              "eps": None, "accuracy": max(0.0, acc)})
            t["final_clean_acc"] = t["clean_acc"] - 0.005
            t["final_worst_seen"] = max(0.0, aggregates["worst_seen"][2])
            t["final_union_unseen"] = max(0.0, aggregates["union_unseen"][2])
            t["masking_flags"] = ""
    store.write_trials(exp_dir, trials)
    store.write_evals(exp_dir, evals)
    store.write_json(exp_dir / store.EXPERIMENT, {
        "config": {"method": method, "dataset": "digits", "num_samples": n, "max_epochs": epochs, "eps_eval": 0.2},
        "search_space": {k: {"type": "int" if isinstance(lo, int) else "float", "low": lo, "high": hi,
                             "log": k in ("lr", "weight_decay", "beta")} for k, (lo, hi) in space.items()},
        "objectives": ["clean_acc", "robust_acc"], "git_revision": "0" * 40, "versions": {"torch": "2"}})
    return exp_dir


def write_results(root: Path, final: bool = True) -> Path:
    """A results root with two methods (plus the component cache folder and an unrelated one)."""
    write_experiment(root, "pgd_at", n=7, seed=1, final=final, running=True)
    write_experiment(root, "standard", n=4, seed=2, final=final, t0=1.7e9 + 5)
    (root / ".components" / "flow-abc").mkdir(parents=True)
    (root / ".components" / "flow-abc" / store.TRIALS).write_bytes(b"not ours")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an experiment")
    return root


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_loads_all_experiments_and_ignores_other_folders(root):
    res = data.load_results(root)
    assert res.experiments == ["pgd_at-digits", "standard-digits"]
    assert res.problems == []
    assert len(res.trials) == 11
    assert set(res.trials["method"]) == {"pgd_at", "standard"}
    # hyperparameters of the other method are NaN, not dropped
    assert res.trials.loc[res.trials["method"] == "standard", "hp_eps_train"].isna().all()
    assert res.trials.loc[res.trials["method"] == "pgd_at", "hp_attack_steps"].notna().all()
    assert set(res.evals["stage"]) == {"trial", "final"}
    assert res.meta["pgd_at-digits"]["config"]["method"] == "pgd_at"


def test_root_that_is_one_experiment(root):
    res = data.load_results(root / "standard-digits")
    assert res.experiments == ["standard-digits"]
    assert len(res.trials) == 4


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(data.RootError, match="does not exist"):
        data.load_results(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(data.RootError, match="not a folder"):
        data.load_results(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    res = data.load_results(tmp_path / "empty")
    assert res.experiments == [] and res.trials.empty and res.problems == []
    # tables on no data are empty, not errors
    table = data.objectives(res.trials, res.evals, data.PROXY)
    assert table.empty and list(data.views(res.evals)) == [data.View(data.PROXY, data.views(res.evals)[0].label)]
    assert data.hypervolume_curve(data.with_front(table)).empty


def test_corrupt_and_partial_files_become_problems(root):
    (root / "pgd_at-digits" / store.TRIALS).write_bytes(b"PAR1 this is not parquet")
    (root / "standard-digits" / store.EVALS).write_bytes(b"\x00" * 100)
    (root / "standard-digits" / store.EXPERIMENT).write_text("{not json")
    partial = root / "starting"
    store.write_json(partial / store.EXPERIMENT, {"config": {"method": "trades"}})
    truncated = root / "truncated"
    truncated.mkdir()
    whole = (root / "standard-digits" / store.TRIALS).read_bytes()
    (truncated / store.TRIALS).write_bytes(whole[: len(whole) // 2])
    res = data.load_results(root)
    def has(exp, level, text):
        return any(p.experiment == exp and p.level == level and text in p.message for p in res.problems)
    assert has("pgd_at-digits", "error", "trials.parquet is unreadable")
    assert has("standard-digits", "warning", "evals.parquet is unreadable")
    assert has("standard-digits", "warning", "experiment.json is unreadable")
    assert has("starting", "warning", "no trials.parquet yet")
    assert has("truncated", "error", "trials.parquet is unreadable")
    # what could be read is still there
    assert res.experiments == ["standard-digits"]
    assert len(res.trials) == 4 and res.evals.empty
    assert data.objectives(res.trials, res.evals)["clean"].notna().sum() == 3


def test_files_missing_columns_or_rows(tmp_path):
    root = tmp_path / "r"
    store.write_parquet(root / "a" / store.TRIALS, [{"method": "x"}], {})
    store.write_trials(root / "b", [])
    store.write_trials(root / "c", [{"trial_id": "t1", "method": "pgd_at", "clean_acc": 0.9, "robust_acc": 0.4,
                                     "status": "completed", "finished_at": 1.0}])
    store.write_parquet(root / "c" / store.EVALS, [{"trial_id": "t1", "stage": "final"}], {})
    res = data.load_results(root)
    assert any(p.experiment == "a" and p.level == "error" and "lacks column(s) trial_id" in p.message
               for p in res.problems)
    assert any(p.experiment == "b" and "no trials yet" in p.message for p in res.problems)
    assert any(p.experiment == "c" and "evals.parquet lacks" in p.message for p in res.problems)
    assert res.experiments == ["b", "c"]
    table = data.with_front(data.objectives(res.trials, res.evals))
    assert table["on_front"].tolist() == [True]


def test_paths_escaping_the_root_are_refused(tmp_path, root):
    outside = write_experiment(tmp_path / "elsewhere", "trades", n=3)
    os.symlink(outside, root / "linked")
    os.symlink(outside / store.TRIALS, root / "standard-digits" / "trials_link")
    (root / "standard-digits" / store.EVALS).unlink()
    os.symlink(outside / store.EVALS, root / "standard-digits" / store.EVALS)
    inner = root / "inner_link"
    os.symlink(root / "pgd_at-digits", inner)  # stays inside: allowed
    res = data.load_results(root)
    assert "linked" not in res.experiments
    assert any(p.experiment == "linked" and "outside the results root" in p.message for p in res.problems)
    assert any(p.experiment == "standard-digits" and "outside the results root" in p.message for p in res.problems)
    assert "trades" not in set(res.trials["method"]) and "trades" not in set(res.evals.get("method", []))
    assert "inner_link" in res.experiments


def test_proxy_view_uses_trial_summary_and_fills_running_trials(root):
    res = data.load_results(root)
    table = data.objectives(res.trials, res.evals, data.PROXY)
    t = res.trials.set_index(data.KEY)
    tab = table.set_index(data.KEY)
    done = t["status"] == store.COMPLETED
    assert np.allclose(tab.loc[done[done].index, "clean"], t.loc[done, "clean_acc"])
    running = t.index[t["status"] == store.RUNNING][0]
    ev = res.evals
    last = ev[(ev["trial_id"] == running[1]) & (ev["stage"] == "trial") & (ev["epoch"] == ev["epoch"].max())]
    assert tab.loc[running, "robust"] == pytest.approx(last.loc[last["attack"] == "pgd20_linf", "accuracy"].item())
    failed = t.index[t["status"] == store.FAILED]
    # a failed trial's epoch-1 rows do not put it on a front
    assert len(failed) and tab.loc[failed, ["clean", "robust"]].isna().all().all()
    assert len(table) == len(res.trials)


def test_final_views_and_aggregates(root):
    res = data.load_results(root)
    views = data.views(res.evals)
    keys = [v.key for v in views]
    assert keys[:3] == [data.PROXY, data.WORST_SEEN, data.UNION_UNSEEN]
    single = {a for a, _, _ in SEEN + UNSEEN}
    assert {k.split(":", 1)[1] for k in keys if k.startswith("attack:") and k[7:] in single} == single
    assert {"family:corruption", "family:pgd", "family:apgd"} <= set(keys)
    assert "family:stadv" not in keys  # one attack: its own view suffices
    assert {"attack:union_unseen_adversarial", "attack:mean_corruption"} <= set(keys)
    # clean, checks and the per-family worst cases (shown as family views) are no views of their own
    assert not {"attack:clean", "attack:worst_seen", "attack:worst_pgd", "attack:pgd_eps_x2"} & set(keys)
    fin = data.final_rows(res.evals)
    worst = data.objectives(res.trials, res.evals, data.WORST_SEEN).dropna(subset=["robust"])
    assert set(worst["trial_id"]) == set(fin["trial_id"])  # only the evaluated candidates
    for rec in worst.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        assert rec.robust == rows.loc[rows["attack"] == "worst_seen", "accuracy"].item()
        assert rec.clean == rows.loc[rows["attack"] == "clean", "accuracy"].item()
    fam = data.objectives(res.trials, res.evals, "family:corruption").dropna(subset=["robust"])
    for rec in fam.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        # the stored per-image worst case, below each member attack
        assert rec.robust == rows.loc[rows["attack"] == "worst_corruption", "accuracy"].item()
        assert rec.robust < rows.loc[rows["attack"].isin(["gaussian_noise_s3", "blur_s3"]), "accuracy"].min()
    one = data.objectives(res.trials, res.evals, "attack:square").dropna(subset=["robust"])
    for rec in one.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)]
        assert rec.robust == rows.loc[rows["attack"] == "square", "accuracy"].item()


def test_family_view_without_stored_worst_case_takes_the_worst_member(root):
    res = data.load_results(root)
    ev = res.evals[~res.evals["attack"].str.startswith("worst_")]
    fin = data.final_rows(ev)
    fam = data.objectives(res.trials, ev, "family:pgd").dropna(subset=["robust"])
    assert len(fam)
    for rec in fam.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & fin["attack"].isin(["pgd_ce", "pgd_cw"])]
        assert rec.robust == rows["accuracy"].min()


def test_clean_per_draw_is_not_the_clean_accuracy(root):
    res = data.load_results(root)
    fin = data.final_rows(res.evals)
    extra = fin[fin["attack"] == "clean"].assign(attack="clean_per_draw", accuracy=1.0)
    ev = pd.concat([res.evals, extra], ignore_index=True)
    table = data.objectives(res.trials, ev, data.WORST_SEEN).dropna(subset=["robust"])
    assert (table["clean"] < 1.0).all()


def test_aggregate_falls_back_to_worst_attack_when_not_stored(root):
    res = data.load_results(root)
    ev = res.evals[res.evals["attack"] != "union_unseen"]
    assert (data.final_rows(ev)["attack"] == "union_unseen_adversarial").any()  # not taken for the union
    fin = data.final_rows(ev)
    table = data.objectives(res.trials, ev, data.UNION_UNSEEN).dropna(subset=["robust"])
    assert len(table)
    for rec in table.itertuples():
        rows = fin[(fin["trial_id"] == rec.trial_id) & (fin["experiment"] == rec.experiment)
                   & (fin["threat"] == "unseen") & (fin["norm"] != "mixed")]
        assert rec.robust == rows["accuracy"].min()


def test_no_final_rows_leaves_final_views_out(tmp_path):
    root = write_results(tmp_path / "r", final=False)
    res = data.load_results(root)
    assert [v.key for v in data.views(res.evals)] == [data.PROXY]
    assert data.seen_unseen(res.trials, res.evals).empty
    assert data.objectives(res.trials, res.evals, data.WORST_SEEN)["robust"].isna().all()


def test_front_per_method_and_hypervolume(root):
    res = data.load_results(root)
    table = data.with_front(data.objectives(res.trials, res.evals))
    for method, sub in table.groupby("method"):
        pts = sub[["clean", "robust"]].to_numpy(float)
        assert sub["on_front"].tolist() == pareto_mask(pts).tolist()
        assert data.hypervolumes(table)[method] == pytest.approx(hypervolume_2d(pts))
    assert table.loc[table["robust"].isna(), "on_front"].eq(False).all()


def test_hypervolume_curve_in_completion_order(root):
    res = data.load_results(root)
    table = data.with_front(data.objectives(res.trials, res.evals))
    curve = data.hypervolume_curve(table)
    for method, sub in curve.groupby("method"):
        done = table[(table["method"] == method) & table["finished_at"].notna()].sort_values("finished_at")
        assert sub["n_trials"].tolist() == list(range(1, len(done) + 1))
        assert sub["trial_id"].tolist() == done["trial_id"].tolist()
        assert np.all(np.diff(sub["hypervolume"]) >= 0)
        assert sub["hypervolume"].iloc[-1] == pytest.approx(hypervolume_2d(done[["clean", "robust"]].to_numpy(float)))
        # failed trials spend device time too
        assert sub["device_hours"].iloc[-1] == pytest.approx(done["device_s"].sum() / 3600)
        for k in range(1, len(done) + 1):
            assert sub["hypervolume"].iloc[k - 1] == pytest.approx(
                hypervolume_2d(done[["clean", "robust"]].to_numpy(float)[:k]))
    # the running trial (no finished_at) is not on the curve
    running = res.trials.loc[res.trials["status"] == store.RUNNING, "trial_id"].item()
    assert running not in set(curve["trial_id"])


def test_seen_unseen_retention(root):
    res = data.load_results(root)
    su = data.seen_unseen(res.trials, res.evals)
    assert len(su) == data.final_rows(res.evals)[data.KEY].drop_duplicates().shape[0]
    ratio = su["union_unseen"] / su["worst_seen"]
    assert np.allclose(su["retained"].dropna(), ratio[su["worst_seen"] > 0])


def test_selection_details(root):
    res = data.load_results(root)
    fin = data.final_rows(res.evals)
    key = tuple(fin[data.KEY].iloc[0])
    other = tuple(res.trials.loc[res.trials["method"] == "standard", data.KEY].iloc[0])
    points = [{"customdata": [key[0], key[1], 0.9]}, {"customdata": list(key)}, {"x": 1},
              {"customdata": [other[0], other[1]]}]
    keys = data.selected_keys(points)
    assert keys == [key, other]
    hp = data.hyperparameters(res.trials, keys)
    assert list(hp.columns) == [data.label(*key), data.label(*other)]
    assert "eps_train" in hp.index and "weight_decay" in hp.index and "hp_lr" not in hp.index
    assert list(data.hyperparameters(res.trials, keys, searched=["weight_decay"]).index[:2]) == ["method", "weight_decay"]
    assert hp.loc["eps_train", data.label(*other)] == ""  # the standard trial has no such knob
    acc = data.attack_accuracies(res.evals, keys)
    mine = acc[acc["trial"] == data.label(*key)]
    assert set(mine["stage"]) == {"final"} and "square" in set(mine["attack"])
    assert set(mine.loc[mine["aggregate"], "attack"]) >= {"worst_seen", "union_unseen", "worst_pgd", "mean_corruption"}
    assert not mine.loc[mine["attack"].isin(["square", "clean", "pgd_eps_x2"]), "aggregate"].any()
    assert mine["threat"].tolist().index("seen") > mine["threat"].tolist().index("clean")
    theirs = acc[acc["trial"] == data.label(*other)]
    if not (data.final_rows(res.evals)["trial_id"] == other[1]).any():
        assert set(theirs["stage"]) == {"trial"} and theirs["epoch"].nunique() == 1
    assert data.selected_keys(None) == []


def test_masking_flags_stored_and_checked(tmp_path):
    root = tmp_path / "r"
    exp = write_experiment(root, "pgd_at", n=6, failed=False)
    evals = store.read_rows(exp / store.EVALS)
    cands = list(dict.fromkeys(r["trial_id"] for r in evals if r["stage"] == "final"))
    assert len(cands) >= 2
    for r in evals:
        if r["trial_id"] in cands[:2] and r["stage"] == "final" and r["attack"] == "square":
            r["accuracy"] = 0.0  # gradient-free far below every gradient attack
    store.write_evals(exp, evals)
    trials = store.read_rows(exp / store.TRIALS)
    for t in trials:
        if t["trial_id"] == cands[0]:
            t["masking_flags"] = "gradient_free_beats_whitebox;fgsm_beats_pgd"
        elif t["trial_id"] == cands[1]:
            t["masking_flags"] = ""  # checked by the evaluator, nothing found: its verdict stands
    store.write_trials(exp, trials)
    res = data.load_results(root)
    keys = [("pgd_at-digits", c) for c in cands[:2]]
    flags = data.masking_flags(res.trials, res.evals, keys).set_index("trial")["flags"]
    assert flags[data.label(*keys[0])] == ["gradient_free_beats_whitebox", "fgsm_beats_pgd"]
    assert flags[data.label(*keys[1])] == []
    never = next(t["trial_id"] for t in trials if t["trial_id"] not in cands)
    checked = data.masking_flags(res.trials, res.evals, keys + [("pgd_at-digits", never)])["checked_by"].tolist()
    assert checked == ["evaluator", "evaluator", ""]
    # without the evaluator's column the dashboard's own checks run
    bare = res.trials.drop(columns="masking_flags")
    flags = data.masking_flags(bare, res.evals, keys).set_index("trial")["flags"]
    assert any("gradient-free" in f for f in flags[data.label(*keys[1])])
    untouched = ("pgd_at-digits", cands[2]) if len(cands) > 2 else None
    if untouched:
        assert data.masking_flags(bare, res.evals, [untouched])["flags"].item() == []
    assert data._flag_list('["a", "b"]') == ["a", "b"] and data._flag_list(math.nan) == []


def test_filter_sort_and_csv(root):
    res = data.load_results(root)
    table = data.trial_table(res.trials, data.with_front(data.objectives(res.trials, res.evals)))
    assert table.columns[:2].tolist() == data.KEY and "hp_lr" in table
    out = data.filter_trials(table, methods=["pgd_at"], statuses=["completed"], sort_by="robust")
    assert set(out["method"]) == {"pgd_at"} and set(out["status"]) == {"completed"}
    assert out["robust"].is_monotonic_decreasing
    front = data.filter_trials(table, front_only=True)
    assert front["on_front"].all() and len(front) == table["on_front"].sum()
    high = data.filter_trials(table, min_robust=0.3)
    assert (high["robust"] >= 0.3).all()
    csv = data.to_csv(out)
    back = pd.read_csv(__import__("io").BytesIO(csv))
    assert back["trial_id"].tolist() == out["trial_id"].tolist()


def test_fingerprint_changes_with_new_trials(root):
    before = data.fingerprint(root)
    assert before == data.fingerprint(root)
    write_experiment(root, "pgd_at", n=8, seed=1)
    assert data.fingerprint(root) != before
    new = root / "trades-digits"
    after = data.fingerprint(root)
    write_experiment(root, "trades", n=2)
    assert new.exists() and data.fingerprint(root) != after


def test_search_space_and_summary(root):
    meta = json.loads((root / "pgd_at-digits" / store.EXPERIMENT).read_text())
    space = data.search_space(meta)
    assert set(space) == {"eps_train", "attack_steps", "lr"} and space["lr"]["log"] is True
    assert data.search_space({"config": {"search_space": {"a": {"type": "int"}, "_doc": {}}}}) == {"a": {"type": "int"}}
    assert data.search_space({}) == {}
    assert data.experiment_summary(meta)["method"] == "pgd_at"
