"""The JSON card written beside an exported model: what the file computes and how to call it,
the trial's method, data, architecture and every hyperparameter, the threat model, and the
final evaluation's accuracies, each with its number of test images and a 95% Wilson interval.

Field names follow RobustBench's model cards where they mean the same (``dataset``,
``threat_model``, ``eps``, ``architecture``, ``clean_acc``, ``additional_data``,
``number_forward_passes``); unlike RobustBench, accuracies are fractions in [0, 1]. The robust
accuracies are this project's attack suite, not AutoAttack, and are named for what they are
(``worst_seen_acc``, ``union_unseen_acc``). The search's per-epoch numbers are labelled a proxy.
"""
from __future__ import annotations

import datetime
import math
import time
from typing import Any

import torch

from raysearch.export.scriptable import Exported
from raysearch.schema import Stage
from raysearch.stats import accuracy_interval
from trainables.spec import DataSpec

CARD_VERSION = 1
SUBSET_SEED = 0  # the final evaluation's default --seed: its test subset is eval_subset(test, n, 0)

WHAT = {
    "clean": "clean accuracy on the test subset",
    "worst_seen": "per image, correct clean and under every seen attack (the suite's L∞ attacks at eps)",
    "union_unseen": "per image, correct clean and under every unseen adversarial attack (L2, flow, colour, "
                    "JPEG; not corruptions)",
    "clean_per_draw": "mean accuracy of single calls (one random draw each), clean",
}


def finite_number(value) -> float | None:
    """A finite float, else None (JSON has no NaN)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def accuracy_entry(value, n: int | None, what: str) -> dict[str, Any]:
    """{value, n, correct, ci95, what}; value and interval null where it was not measured."""
    value = finite_number(value)
    if value is None or not n:
        return {"value": value, "n": n, "correct": None, "ci95": None, "what": what}
    # correct: accuracy · n as measured (a randomized predictor's per-call score is fractional),
    # the interval the same as the results store's
    correct = value * n
    correct = int(round(correct)) if abs(correct - round(correct)) < 1e-6 else round(correct, 6)
    return {"value": value, "n": n, "correct": correct, "ci95": list(accuracy_interval(value, n)), "what": what}


def eps_eval_of(row: dict, spec: DataSpec) -> float:
    """The trial's L∞ radius as the final evaluation takes it (0 recorded: the data set's)."""
    eps = finite_number(row.get("eps_eval"))
    return eps if eps is not None and eps > 0 else spec.eps_eval


def build_card(*, experiment: str, row: dict, config: dict, spec: DataSpec, architecture: str,
               exported: Exported, randomized: bool, evals: list[dict], recorded: dict,
               model_file: str, max_logit_diff: float) -> dict[str, Any]:
    """The card of one exported trial. ``row``: its trials.parquet row; ``config``: its full
    config from the checkpoint; ``evals``: its evals.parquet rows (any stage); ``recorded``:
    the experiment's experiment.json ({} if none)."""
    final = [r for r in evals if r.get("stage") == Stage.FINAL]
    by_attack = {r["attack"]: r for r in final}
    n = int(by_attack["clean"]["n"]) if "clean" in by_attack else None
    evaluated = finite_number(row.get("final_clean_acc")) is not None
    eps = eps_eval_of(row, spec)
    accuracy = {"unit": "fraction in [0, 1]", "interval": "95% Wilson score interval over the n test images",
                "clean": accuracy_entry(row.get("final_clean_acc"), n, WHAT["clean"]),
                "worst_seen": accuracy_entry(row.get("final_worst_seen"), n, WHAT["worst_seen"]),
                "union_unseen": accuracy_entry(row.get("final_union_unseen"), n, WHAT["union_unseen"])}
    if randomized and "clean_per_draw" in by_attack:
        accuracy["clean_per_draw"] = accuracy_entry(by_attack["clean_per_draw"]["accuracy"], n,
                                                    WHAT["clean_per_draw"])
    flags = [f for f in (row.get("masking_flags") or "").split(";") if f]
    return {
        "card_version": CARD_VERSION,
        "name": f"{experiment}/{row['trial_id']}",
        "experiment": experiment,
        "trial_id": row["trial_id"],
        "method": row.get("method"),
        "dataset": row.get("dataset"),
        "architecture": architecture,
        "additional_data": False,
        "data_spec": {"channels": spec.channels, "height": spec.size, "width": spec.size, "classes": spec.classes,
                      "mean": list(spec.mean), "std": list(spec.std)},
        "file": {"name": model_file, "format": "TorchScript", "made_by": exported.how,
                 "load": "model = torch.jit.load(path, map_location='cpu'); logits = model(images)",
                 "max_logit_diff_to_project_predictor": max_logit_diff},
        "input": {"layout": "N×C×H×W", "dtype": "float32", "range": [0.0, 1.0],
                  "shape": [None, spec.channels, spec.size, spec.size],
                  "normalization": "inside the model (data_spec mean and std): pass pixels scaled to [0, 1]"},
        "output": f"logits, N×{spec.classes} (no softmax)",
        "randomized": randomized,
        "calling": exported.note or "deterministic: the same images give the same logits",
        "number_forward_passes": exported.forward_passes,
        "hyperparameters": config,
        "threat_model": "Linf",
        "eps": eps,
        "eps_eval": eps,
        "eps_unit": "[0, 1] pixel scale",
        "evaluated": evaluated,
        "clean_acc": accuracy["clean"]["value"],
        "worst_seen_acc": accuracy["worst_seen"]["value"],
        "union_unseen_acc": accuracy["union_unseen"]["value"],
        "accuracy": accuracy,
        "final_evaluation": _final_evaluation(evaluated, final, n, randomized),
        "masking_flags": flags if evaluated else None,
        "masking_flags_meaning": "the final evaluation's gradient-masking and honesty checks that fired "
                                 "(raysearch.evaluate.checks); [] none fired, null not evaluated",
        "per_epoch_proxy": _proxy(row, evals),
        "provenance": {"git_revision": recorded.get("git_revision") or None,
                       "git_dirty": recorded.get("git_dirty"),
                       "trained_at": _date(row.get("finished_at")),
                       "exported_at": _date(time.time()),
                       "torch_version": torch.__version__,
                       "checkpoint": row.get("checkpoint")},
    }


def _date(unix_seconds) -> str | None:
    """An ISO 8601 UTC date (None for a missing time)."""
    seconds = finite_number(unix_seconds)
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


def _final_evaluation(evaluated: bool, final: list[dict], n: int | None, randomized: bool) -> dict[str, Any]:
    if not evaluated:
        return {"evaluated": False,
                "note": "no final evaluation: no test accuracy; run python -m raysearch.evaluate --experiment "
                        "<experiment> --trials <trial> --only-trials, then export again"}
    eot = max((int(r.get("eot_samples") or 1) for r in final if r["attack"] == "clean"), default=1)
    calls = max((int(r.get("scoring_calls") or 1) for r in final if r["attack"] == "clean"), default=1)
    return {
        "evaluated": True,
        "split": "test",
        "n": n,
        "subset": {"seed": SUBSET_SEED,
                   "how": "raysearch.data.eval_subset(test split, n, seed): the first n images of a permutation "
                          "drawn with torch.Generator().manual_seed(seed)"},
        "attack_suite": "this project's attacks (raysearch.evaluate), not AutoAttack; the ones run are listed "
                        "under attacks: seen = L∞ at eps, unseen = other threat models and corruptions",
        "randomized_scoring": (f"per call, as deployed: an image's accuracy is the fraction of {calls} fresh calls "
                               f"that answer correctly, the set's the mean over images; attack gradients average "
                               f"{eot} random draws (EOT); *_ensemble rows are the vote of the calls, a different "
                               f"model" if randomized else None),
        "attacks": [_attack(r) for r in final],
    }


def _attack(row: dict) -> dict[str, Any]:
    return {"attack": row["attack"], "family": row.get("family"), "threat": row.get("threat"), "norm": row.get("norm"),
            "eps": finite_number(row.get("eps")), "accuracy": finite_number(row.get("accuracy")), "n": row.get("n"),
            "eot_samples": row.get("eot_samples")}


def _proxy(row: dict, evals: list[dict]) -> dict[str, Any]:
    """The search's per-epoch numbers, labelled as the proxy they are."""
    history: dict[int, dict[str, Any]] = {}
    for r in sorted((r for r in evals if r.get("stage") == Stage.TRIAL), key=lambda r: (r["epoch"], r["attack"])):
        entry = history.setdefault(int(r["epoch"]), {"epoch": int(r["epoch"]), "n": r.get("n")})
        if r["attack"] == "clean":
            entry["clean_acc"] = finite_number(r.get("accuracy"))
        else:
            entry["robust_acc"], entry["attack"] = finite_number(r.get("accuracy")), r["attack"]
    return {"label": "proxy: validation-split accuracies measured during the search (clean, and one PGD attack "
                     "at eps_eval) to steer it; not test accuracy, not a robustness estimate",
            "epochs": row.get("epochs"),
            "clean_acc": finite_number(row.get("clean_acc")),
            "robust_acc": finite_number(row.get("robust_acc")),
            "history": list(history.values())}
