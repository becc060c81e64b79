"""The JSON card of an exported trial (raysearch.export.card): RobustBench's field names where
they mean the same, accuracies with n and Wilson intervals, the proxy labelled as one, nothing
claimed that was not measured."""
from __future__ import annotations

import json
import math

import pytest

from raysearch import schema
from raysearch.export.card import accuracy_entry, build_card, eps_eval_of
from raysearch.export.scriptable import Exported
from raysearch.schema import Stage, Status, Threat
from raysearch.stats import wilson

N = 200


def _row(**changes) -> dict:
    row = schema.trial_row(experiment="stored-name", trial_id="t3", method="pgd_at", dataset="digits",
                           arch="auto", eps_eval=0.0, num_workers=1, started_at=0.0, config={"lr": 0.05})
    row.update(status=Status.COMPLETED, clean_acc=0.9, robust_acc=0.6, epochs=2, finished_at=1.7e9,
               checkpoint="train/t3/checkpoint_000001", **changes)
    return row


def _evals(final: bool = True, randomized: bool = False) -> list[dict]:
    common = dict(experiment="e", trial_id="t3", method="pgd_at", dataset="digits", n=N, seconds=0.1,
                  queries=0, restarts=1, iterations=20, protocol="standard")
    rows = [schema.eval_row(**common, stage=Stage.TRIAL, epoch=e, attack=a, family="x", threat=Threat.SEEN,
                            norm="linf", eps=0.2, accuracy=acc, eot_samples=1, scoring_calls=1)
            for e, a, acc in [(1, "clean", 0.8), (1, "pgd20_linf", 0.4), (2, "clean", 0.9), (2, "pgd20_linf", 0.6)]]
    if final:
        eot = 8 if randomized else 1
        final_common = dict(common, stage=Stage.FINAL, epoch=schema.FINAL_EPOCH)
        rows += [schema.eval_row(**final_common, attack="clean", family="clean", threat=Threat.CLEAN, norm="none",
                                 eps=0.0, accuracy=0.85, eot_samples=eot, scoring_calls=1),
                 schema.eval_row(**final_common, attack="apgd_ce", family="apgd", threat=Threat.SEEN, norm="linf",
                                 eps=0.2, accuracy=0.5, eot_samples=eot, scoring_calls=1),
                 schema.eval_row(**final_common, attack="worst_seen", family="worst_seen", threat=Threat.SEEN,
                                 norm="mixed", eps=math.nan, accuracy=0.45, eot_samples=eot, scoring_calls=1)]
        if randomized:
            rows.append(schema.eval_row(**final_common, attack="clean_per_draw", family="clean", threat=Threat.CLEAN,
                                        norm="none", eps=0.0, accuracy=0.8, eot_samples=1, scoring_calls=1))
    return rows


def _card(row=None, evals=None, randomized=False, digits_spec=None):
    exported = Exported(module=None, how="script", forward_passes=1, note="")  # the card reads no module
    return build_card(experiment="exp-folder", row=row or _row(), config={"lr": 0.05, "eps_train": 0.2},
                      spec=digits_spec, architecture="small_cnn", exported=exported, randomized=randomized,
                      evals=_evals() if evals is None else evals,
                      recorded={"git_revision": "abc123", "git_dirty": False}, model_file="m.pt", max_logit_diff=0.0)


def test_an_accuracy_comes_with_its_count_and_wilson_interval():
    entry = accuracy_entry(0.45, N, "what")
    assert entry["correct"] == 90 and entry["n"] == N and entry["ci95"] == list(wilson(90, N))
    assert accuracy_entry(math.nan, N, "w") == {"value": None, "n": N, "correct": None, "ci95": None, "what": "w"}
    assert accuracy_entry(0.5, None, "w")["ci95"] is None


def test_eps_eval_zero_means_the_data_sets_radius(digits):
    assert eps_eval_of({"eps_eval": 0.0}, digits.spec) == digits.spec.eps_eval == 0.2
    assert eps_eval_of({"eps_eval": 0.1}, digits.spec) == 0.1


def test_the_card_of_an_evaluated_trial(digits):
    card = _card(_row(final_clean_acc=0.85, final_worst_seen=0.45, final_union_unseen=math.nan,
                      masking_flags="fgsm_beats_pgd"), digits_spec=digits.spec)
    json.dumps(card, allow_nan=False)  # strict JSON: no NaN anywhere
    assert (card["threat_model"], card["eps"], card["dataset"], card["architecture"]) == ("Linf", 0.2, "digits",
                                                                                         "small_cnn")
    assert card["name"] == "exp-folder/t3" and card["additional_data"] is False and card["evaluated"]
    assert card["clean_acc"] == 0.85 and card["worst_seen_acc"] == 0.45 and card["union_unseen_acc"] is None
    assert card["accuracy"]["clean"]["correct"] == 170 and card["accuracy"]["union_unseen"]["ci95"] is None
    assert card["data_spec"] == {"channels": 1, "height": 8, "width": 8, "classes": 10, "mean": [0.305],
                                 "std": [0.38]}
    assert card["input"]["range"] == [0.0, 1.0] and card["input"]["shape"] == [None, 1, 8, 8]
    assert card["hyperparameters"] == {"lr": 0.05, "eps_train": 0.2} and card["masking_flags"] == ["fgsm_beats_pgd"]
    assert [a["attack"] for a in card["final_evaluation"]["attacks"]] == ["clean", "apgd_ce", "worst_seen"]
    assert card["final_evaluation"]["n"] == N and card["final_evaluation"]["randomized_scoring"] is None
    assert card["provenance"]["git_revision"] == "abc123" and card["provenance"]["trained_at"].startswith("2023-11")
    proxy = card["per_epoch_proxy"]
    assert proxy["label"].startswith("proxy") and proxy["robust_acc"] == 0.6
    assert proxy["history"] == [{"epoch": 1, "n": N, "clean_acc": 0.8, "robust_acc": 0.4, "attack": "pgd20_linf"},
                                {"epoch": 2, "n": N, "clean_acc": 0.9, "robust_acc": 0.6, "attack": "pgd20_linf"}]
    # the suite is not AutoAttack: no field claims it
    assert "autoattack" not in json.dumps(list(_keys(card))).lower()


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def test_a_randomized_trial_says_its_accuracy_is_over_random_draws(digits):
    card = _card(_row(final_clean_acc=0.85, final_worst_seen=0.45), _evals(randomized=True), randomized=True,
                 digits_spec=digits.spec)
    assert card["randomized"] and card["accuracy"]["clean_per_draw"]["value"] == 0.8
    assert "gradients average 8 random draws" in card["final_evaluation"]["randomized_scoring"]


@pytest.mark.parametrize("evals", [[], None])
def test_a_trial_without_final_evaluation_claims_no_test_accuracy(evals, digits):
    card = _card(evals=evals if evals is not None else _evals(final=False), digits_spec=digits.spec)
    json.dumps(card, allow_nan=False)
    assert card["evaluated"] is False and card["final_evaluation"]["evaluated"] is False
    assert card["clean_acc"] is card["worst_seen_acc"] is card["masking_flags"] is None
    assert all(card["accuracy"][k]["value"] is None for k in ("clean", "worst_seen", "union_unseen"))
