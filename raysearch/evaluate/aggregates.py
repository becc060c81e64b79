"""Per-image aggregates of one predictor's attack results: an image counts as robust only if
it is classified correctly clean and under every attack aggregated. Per family the worst case
over its attacks and variants; over seen attacks the worst case ("worst_seen"); over unseen
attacks the union ("union_unseen", and without the corruptions "union_unseen_adversarial");
the mean accuracy over corruptions. Check attacks count in none of them. On the robustness
curve, per radius the worst case over the seen attacks run at that radius."""
from __future__ import annotations


import numpy as np
import torch

from raysearch.schema import Threat
from raysearch.evaluate.results import AttackResult, PredictorReport


def robust_to_all(results: list[AttackResult], clean: torch.Tensor) -> torch.Tensor:
    """Per image: correct clean and robust to every attack of ``results``."""
    robust = clean.clone()
    for r in results:
        robust &= r.robust
    return robust


def aggregate(rep: PredictorReport) -> None:
    """Fill ``rep.aggregates``: name -> (family, threat, accuracy)."""
    counted = [r for r in rep.results if r.threat in (Threat.SEEN, Threat.UNSEEN)]
    for fam in dict.fromkeys(r.family for r in counted):
        members = [r for r in counted if r.family == fam]
        rep.aggregates[f"worst_{fam}"] = (fam, members[0].threat,
                                          float(robust_to_all(members, rep.clean).float().mean()))
    seen = [r for r in counted if r.threat == Threat.SEEN]
    unseen = [r for r in counted if r.threat == Threat.UNSEEN]
    if seen:
        rep.aggregates["worst_seen"] = ("worst_seen", Threat.SEEN, float(robust_to_all(seen, rep.clean).float().mean()))
    if unseen:
        rep.aggregates["union_unseen"] = ("union_unseen", Threat.UNSEEN,
                                          float(robust_to_all(unseen, rep.clean).float().mean()))
        adv = [r for r in unseen if r.family != "corruption"]
        if adv:
            rep.aggregates["union_unseen_adversarial"] = ("union_unseen", Threat.UNSEEN,
                                                         float(robust_to_all(adv, rep.clean).float().mean()))
        corr = [r.accuracy for r in unseen if r.family == "corruption"]
        if corr:
            rep.aggregates["mean_corruption"] = ("corruption", Threat.UNSEEN, float(np.mean(corr)))


def aggregate_curve(rep: PredictorReport) -> None:
    """Fill ``rep.curve``: radius -> per-image worst case over the seen attacks run there."""
    for radius, results in sorted(rep.curve_results.items()):
        if results:
            rep.curve[radius] = float(robust_to_all(results, rep.clean).float().mean())
