"""The dashboard page through streamlit.testing.v1.AppTest: on results written through
raysearch.store (every tab, the view selector, trial details, the trial table, live pick-up of
new trials, broken and escaping folders) and on the results of a real search (``results_root``)."""
from __future__ import annotations

import base64
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import details, fronts, load, views
from dashboard_support import write_experiment, write_results
from raysearch import store
from raysearch.schema import Stage

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 120  # seconds per script run; generous for a loaded 2-core machine


def run_app(monkeypatch, root: Path, *extra: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", [APP, "--results", str(root), "--refresh", "0", *extra])
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [_decode(json.loads(c.proto.spec)) for c in at.get("plotly_chart")]


def _decode(obj):
    """Plotly's JSON with its base64 typed arrays ({"dtype", "bdata"[, "shape"]}) as lists."""
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            arr = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            if "shape" in obj:
                arr = arr.reshape([int(n) for n in str(obj["shape"]).split(",")])
            return arr.tolist()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def title(spec: dict) -> str:
    return spec["layout"].get("title", {}).get("text", "")


def data_traces(spec: dict) -> list[dict]:
    """The traces that carry trials (not the legend's data-free entries)."""
    return [t for t in spec["data"] if t["x"] != [None]]


def front_points(spec: dict) -> dict[str, set[tuple[float, float]]]:
    """Group -> (clean, robust) of every marker of the front chart."""
    out: dict[str, set] = {}
    for trace in data_traces(spec):
        out.setdefault(trace["name"], set()).update(zip(trace["x"], trace["y"]))
    return out


def expected_points(res: load.Results, view: str) -> dict[str, set[tuple[float, float]]]:
    table = views.objectives(res.trials, res.evals, view).dropna(subset=["clean", "robust"])
    return {m: set(zip(sub["clean"], sub["robust"])) for m, sub in table.groupby("method")}


@pytest.fixture
def root(tmp_path):
    return write_results(tmp_path / "results")


def test_page_shows_each_methods_front_with_dominated_trials_faded(monkeypatch, root):
    """With final results the page opens on the final suite's worst case over seen attacks."""
    at = run_app(monkeypatch, root)
    assert not at.error
    res = load.load_results(root)
    assert at.selectbox(key="view").value == views.WORST_SEEN
    front = charts(at)[0]
    assert front_points(front) == expected_points(res, views.WORST_SEEN)
    summary = res.trials.dropna(subset=["final_worst_seen"])
    drawn = set().union(*front_points(front).values())
    assert drawn == set(zip(summary["final_clean_acc"], summary["final_worst_seen"]))
    assert front["layout"]["yaxis"]["title"]["text"] == "worst case over seen attacks (final suite)"
    assert front["layout"]["xaxis"]["title"]["text"] == "clean accuracy (final suite)"
    assert front["layout"]["legend"]["title"]["text"] == "method"
    table = fronts.with_front(views.objectives(res.trials, res.evals, views.WORST_SEEN))
    legend = [t for t in front["data"] if t["x"] == [None]]
    assert [t["name"] for t in legend] == ["pgd_at", "standard"]
    assert not any(t["showlegend"] for t in data_traces(front))
    for trace in data_traces(front):
        sub = table[(table["method"] == trace["name"])].dropna(subset=["robust"])
        on = set(zip(sub.loc[sub["on_front"], "clean"], sub.loc[sub["on_front"], "robust"]))
        pts = set(zip(trace["x"], trace["y"]))
        if trace["marker"]["opacity"] == 1.0:
            assert pts == on and trace["mode"] == "lines+markers"
        else:
            assert pts.isdisjoint(on) and trace["marker"]["opacity"] < 0.5
        assert all(len(cd) >= 2 for cd in trace["customdata"])  # (experiment, trial_id) for selection
        # each accuracy's 95% interval (on final_n test images) as asymmetric error bars
        assert trace["error_x"]["symmetric"] is False and len(trace["error_y"]["arrayminus"]) == len(trace["x"])
    colours = {t["name"]: t["marker"]["color"] for t in front["data"]}
    assert len(set(colours.values())) == len(colours) == 2
    hv = fronts.hypervolumes(table)
    metrics = {m.label.split("· ")[1]: m.value for m in at.metric}
    assert metrics == {k: f"{v:.4f}" for k, v in hv.items()}
    assert "11 trials (8 completed, 2 failed, 1 running)" in at.caption[0].value
    assert any("95% Wilson intervals" in c.value for c in at.caption)
    assert not any("proxy" in c.value.lower() for c in at.caption[:3])


def test_without_final_results_the_page_opens_on_the_proxy_labelled_as_a_proxy(monkeypatch, tmp_path):
    root = write_results(tmp_path / "proxy", final=False)
    at = run_app(monkeypatch, root)
    res = load.load_results(root)
    view = at.selectbox(key="view")
    assert view.value == views.PROXY and view.options == ["Proxy robust (PGD + APGD-T, per epoch)"]
    front = charts(at)[0]
    assert front_points(front) == expected_points(res, views.PROXY)
    layout = front["layout"]
    assert layout["yaxis"]["title"]["text"] == "proxy robust accuracy (PGD + APGD-T, per epoch)"
    assert layout["xaxis"]["title"]["text"] == "proxy clean accuracy (per epoch)"
    assert layout["legend"]["title"]["text"] == "method · proxy"
    assert any(c.value.startswith("Proxy: ") for c in at.caption)
    assert at.slider(key="f_robust").label == "Proxy robust accuracy at least"
    # a final evaluation finishing while the page is open moves it to the final suite
    write_experiment(root, "pgd_at", n=7, seed=1, running=True)
    at.run()
    assert at.selectbox(key="view").value == views.WORST_SEEN
    # the reader's own choice stays
    at.selectbox(key="view").set_value(views.PROXY).run()
    at.run()
    assert at.selectbox(key="view").value == views.PROXY


def test_view_selector_offers_final_attacks_and_redraws(monkeypatch, root):
    at = run_app(monkeypatch, root)
    view = at.selectbox(key="view")
    res = load.load_results(root)
    assert view.options[:3] == [v.label for v in views.views(res.evals)][:3]
    for key in (views.UNION_UNSEEN, "attack:square", "family:corruption"):
        at.selectbox(key="view").set_value(key).run()
        assert not at.exception and not at.error
        assert front_points(charts(at)[0]) == expected_points(res, key)


def test_seen_unseen_and_hypervolume_tabs(monkeypatch, root):
    at = run_app(monkeypatch, root)
    specs = charts(at)
    res = load.load_results(root)
    su = views.seen_unseen(res.trials, res.evals)
    scatter = next(s for s in specs if "seen vs unseen" in title(s))
    pts = {(x, y) for t in scatter["data"] if t["name"] != "unseen = seen" for x, y in zip(t["x"], t["y"])}
    assert pts == set(zip(su["worst_seen"], su["union_unseen"]))
    bars = next(s for s in specs if "kept under unseen" in title(s))
    assert sorted(v for t in bars["data"] for v in t["y"]) == pytest.approx(sorted(su["retained"].dropna()))
    curves = [s for s in specs if title(s) in ("against trials", "against device-hours")]
    assert len(curves) == 2
    by_trials = {t["name"]: t["y"] for t in curves[0]["data"]}
    table = fronts.with_front(views.objectives(res.trials, res.evals, views.WORST_SEEN))
    curve = fronts.hypervolume_curve(table)
    assert by_trials["pgd_at"] == pytest.approx(curve.loc[curve["method"] == "pgd_at", "hypervolume"].tolist())
    hours = {t["name"]: t["x"] for t in curves[1]["data"]}
    assert hours["standard"][-1] == pytest.approx(res.trials.loc[res.trials["method"] == "standard", "device_s"].sum() / 3600)
    # per scheduler: each experiment's proxy and final curve against device-hours
    per = next(s for s in specs if "per scheduler" in title(s))
    assert sorted(t["name"] for t in per["data"]) == [
        f"none · {e} · {o}" for e in ("pgd_at-digits", "standard-digits") for o in ("final", "proxy")]


def test_inspecting_trials_shows_hyperparameters_attacks_and_flags(monkeypatch, root):
    exp_dir = root / "pgd_at-digits"
    evals = store.read_rows(exp_dir / store.EVALS)
    cand = next(r["trial_id"] for r in evals if r["stage"] == Stage.FINAL)
    rows = store.read_rows(exp_dir / store.TRIALS)
    for r in rows:
        r["masking_flags"] = "eot_gap" if r["trial_id"] == cand else None
    store.write_trials(exp_dir, rows)
    at = run_app(monkeypatch, root)
    n_charts = len(at.get("plotly_chart"))
    pick = details.label("pgd_at-digits", cand)
    at.multiselect(key="inspect").select(pick).run()
    assert not at.exception
    hp = next(df.value for df in at.dataframe if pick in df.value.columns)
    assert {"eps_train", "attack_steps", "lr"} <= set(hp.index)
    row = next(r for r in rows if r["trial_id"] == cand)
    assert hp.loc["attack_steps", pick] == str(row["hp_attack_steps"])
    assert any("eot_gap" in w.value for w in at.warning)
    specs = charts(at)
    assert len(specs) == n_charts + 1
    bars = next(s for s in specs if s["data"] and s["data"][0]["type"] == "bar" and s["data"][0]["name"] == pick)
    final = [r for r in evals if r["trial_id"] == cand and r["stage"] == Stage.FINAL]
    assert len(bars["data"][0]["x"]) == len(final)


def test_a_flagged_pbt_trial_shows_its_check_counts_and_lineage(monkeypatch, tmp_path):
    checks = {"gradient_free_beats_whitebox": {"count": 31, "n": 1000, "limit": 16.0, "fired": True,
                                               "what": "images Square fools and no white-box gradient attack fools"},
              "zero_input_gradient": {"count": 0, "n": 1000, "limit": 4.0, "fired": False, "what": "zero gradients"}}
    exp_dir = write_experiment(tmp_path / "r", "pgd_at", n=6, seed=1, failed=False, scheduler="mopbt", checks=checks)
    rows = store.read_rows(exp_dir / store.TRIALS)
    cand = next(r for r in rows if not math.isnan(r["final_worst_seen"]))  # one the final suite evaluated
    cand.update(parent_trial_id="pgd__00001", cloned_at_epoch=4, lineage_json=json.dumps(
        [{"epoch": 2, "parent": "pgd__00000", "changed": {"lr": [0.1, 0.125]}},
         {"epoch": 4, "parent": "pgd__00001", "changed": {"eps_train": [0.12, 0.096]}}]))
    store.write_trials(exp_dir, rows)
    at = run_app(monkeypatch, tmp_path / "r")
    front = charts(at)[0]
    assert "masking check fired" in [t["name"] for t in front["data"]]
    symbols = [sym for t in data_traces(front) for sym in t["marker"]["symbol"]]
    assert symbols and set(symbols) == {"diamond"}  # every trial on the final front was evaluated and flagged
    assert any("Diamonds" in c.value for c in at.caption)
    pick = details.label("pgd_at-digits", cand["trial_id"])
    at.multiselect(key="inspect").select(pick).run()
    assert not at.exception
    tables = [df.value for df in at.dataframe]
    shown = next(t for t in tables if "check" in t.columns)
    assert shown["check"].tolist() == list(checks) and shown["fired"].tolist() == [True, False]
    assert shown["count"].tolist() == [31, 0] and shown["limit"].tolist() == [16.0, 4.0]
    events = next(t for t in tables if "parent" in t.columns)
    assert events["parent"].tolist() == ["pgd__00000", "pgd__00001"] and events["epoch"].tolist() == [2, 4]
    assert events["changed"].tolist() == ["lr: 0.1 → 0.125", "eps_train: 0.12 → 0.096"]
    assert any(c.value == f"{pick}: weights from pgd__00001 (epoch 4) ← pgd__00000 (epoch 2)" for c in at.caption)
    per = next(s for s in charts(at) if "per scheduler" in title(s))
    assert {t["name"] for t in per["data"]} == {"mopbt · pgd_at-digits · proxy", "mopbt · pgd_at-digits · final"}


def test_trial_table_filters_and_downloads(monkeypatch, root):
    at = run_app(monkeypatch, root)
    table = next(df.value for df in at.dataframe if "trial_id" in df.value.columns)
    assert len(table) == 11 and "hp_eps_train" in table
    at.multiselect(key="f_methods").select("standard").run()
    at.checkbox(key="f_front").check().run()
    table = next(df.value for df in at.dataframe if "trial_id" in df.value.columns)
    res = load.load_results(root)
    front = fronts.with_front(views.objectives(res.trials, res.evals))
    want = front[(front["method"] == "standard") & front["on_front"]].sort_values("robust", ascending=False)
    assert table["trial_id"].tolist() == want["trial_id"].tolist()
    assert at.get("download_button") and at.get("download_button")[0].proto.label == "Download CSV"


def test_hyperparameter_effects_use_the_search_space(monkeypatch, root):
    at = run_app(monkeypatch, root)
    specs = charts(at)
    par = next(s for s in specs if s["data"] and s["data"][0]["type"] == "parcoords")
    labels = [d["label"] for d in par["data"][0]["dimensions"]]
    assert labels == ["log10 lr" if k == "lr" else k for k in ["attack_steps", "eps_train", "lr"]] + ["robust acc."]
    at.selectbox(key="hp_method").set_value("standard").run()
    par = next(s for s in charts(at) if s["data"] and s["data"][0]["type"] == "parcoords")
    assert [d["label"] for d in par["data"][0]["dimensions"]] == ["log10 lr", "log10 weight_decay", "robust acc."]


def test_new_trials_appear_on_the_next_run(monkeypatch, root):
    at = run_app(monkeypatch, root)
    before = front_points(charts(at)[0])
    write_experiment(root, "trades", n=3, failed=False)
    at.run()
    assert not at.exception
    assert "3 experiment(s) · 14 trials" in at.caption[0].value
    after = front_points(charts(at)[0])
    assert set(after) == {"pgd_at", "standard", "trades"} and {k: after[k] for k in before} == before
    assert after == expected_points(load.load_results(root), views.WORST_SEEN)


def test_missing_empty_and_broken_results_give_messages(monkeypatch, tmp_path, root):
    at = run_app(monkeypatch, tmp_path / "nowhere")
    assert "does not exist" in at.error[0].value
    (tmp_path / "empty").mkdir()
    at = run_app(monkeypatch, tmp_path / "empty")
    assert not at.error and "No experiments with trials" in at.info[0].value
    (root / "pgd_at-digits" / store.TRIALS).write_bytes(b"garbage")
    (root / "standard-digits" / store.EVALS).write_bytes(b"garbage")
    outside = write_experiment(tmp_path / "elsewhere", "trades", n=3)
    os.symlink(outside, root / "escape")
    at = run_app(monkeypatch, root)
    errors = " ".join(e.value for e in at.error)
    assert "pgd_at-digits" in errors and "unreadable" in errors
    assert "escape" in errors and "outside the results root" in errors
    assert any("evals.parquet is unreadable" in w.value for w in at.warning)
    assert set(front_points(charts(at)[0])) == {"standard"}
    # without its evals, standard's final summary in trials.parquet still gives the final views
    assert at.selectbox(key="view").value == views.WORST_SEEN
    assert not any("No final evaluation yet" in i.value for i in at.info)


def test_bad_argument_is_a_message(monkeypatch, root):
    at = run_app(monkeypatch, root, "--refresh", "soon")
    assert "Bad dashboard argument" in at.error[0].value


@pytest.mark.slow
def test_real_search_results(monkeypatch, results_root):
    at = run_app(monkeypatch, results_root)
    assert not at.error
    res = load.load_results(results_root)
    assert set(res.trials["method"]) == {"pgd_at", "standard"}
    has_final = not views.final_rows(res.evals).empty
    opening = views.WORST_SEEN if has_final else views.PROXY
    assert at.selectbox(key="view").value == opening
    assert front_points(charts(at)[0]) == expected_points(res, opening)
    assert any("No final evaluation yet" in i.value for i in at.info) is not has_final
    at.selectbox(key="view").set_value(views.PROXY).run()
    assert not at.exception and front_points(charts(at)[0]) == expected_points(res, views.PROXY)


def test_radius_selector_redraws_the_front_and_selected_trials_get_a_curve(monkeypatch, tmp_path):
    """With the final evaluation's curve at 0.1 and 0.3: the radius selector appears for seen
    views (default ε_eval), redraws the front at a radius, and inspected trials get their
    accuracy-vs-ε chart. Without a curve there is no selector."""
    from dashboard import curves

    at = run_app(monkeypatch, write_results(tmp_path / "plain"))
    at.selectbox(key="view").set_value(views.WORST_SEEN).run()
    assert not [s for s in at.selectbox if s.key == "radius"]
    root = write_results(tmp_path / "curve", curve=(0.1, 0.3))
    res = load.load_results(root)
    at = run_app(monkeypatch, root)
    at.selectbox(key="view").set_value(views.PROXY).run()
    assert not [s for s in at.selectbox if s.key == "radius"]  # the proxy view has no radius
    at.selectbox(key="view").set_value(views.WORST_SEEN).run()
    radius = at.selectbox(key="radius")
    assert radius.options == ["ε_eval (the search's)", "ε = 0.1", "ε = 0.3"] and radius.value == "eps_eval"
    assert front_points(charts(at)[0]) == expected_points(res, views.WORST_SEEN)
    radius.set_value("0.1").run()
    assert not at.exception and not at.error
    front = charts(at)[0]
    table = curves.objectives_at(res.trials, res.evals, views.WORST_SEEN, 0.1).dropna(subset=["clean", "robust"])
    assert front_points(front) == {m: set(zip(sub["clean"], sub["robust"])) for m, sub in table.groupby("method")}
    assert "at ε = 0.1" in front["layout"]["yaxis"]["title"]["text"]
    n_charts = len(at.get("plotly_chart"))
    keys = list(views.final_rows(res.evals)[load.KEY].drop_duplicates().itertuples(index=False, name=None))[:2]
    at.multiselect(key="inspect").select(details.label(*keys[0])).select(details.label(*keys[1])).run()
    assert not at.exception
    specs = charts(at)
    assert len(specs) == n_charts + 2  # the per-attack bars and the curve
    curve = next(s for s in specs if "Accuracy vs ε" in title(s))
    assert sorted(t["name"] for t in curve["data"]) == sorted(details.label(*k) for k in keys)
    assert all(t["x"] == [0.0, 0.1, 0.2, 0.3] for t in curve["data"])
