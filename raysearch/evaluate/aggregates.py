"""Per-image aggregates of one predictor's attack results. An image's value under a set of
attacks is its worst per-call score: the minimum of its clean score and its score under each
attack (for a deterministic predictor: robust only if correct clean and under every attack).
Per family the worst case over its attacks and variants; over seen attacks the worst case
("worst_seen"); over the suite's unseen adversarial attacks the union ("union_unseen": L2,
flow, colour, JPEG, so that it means the same for every method). Reported apart from it: the
common corruptions, as their union ("union_corruptions", in place of a worst_corruption) and
their mean accuracy ("mean_corruption"), and the attacks a defense offers of its own, each as
its family ("worst_<name>"). Check attacks count in none of them. On the robustness curve, per
radius the worst case over the seen attacks run at that radius. For a randomized predictor the
ensemble vote's clean accuracy and its per-image worst case over the seen attacks are kept
apart ("clean_ensemble", "worst_seen_ensemble")."""
from __future__ import annotations


import numpy as np
import torch

from raysearch.schema import Threat
from raysearch.evaluate.results import AttackResult, PredictorReport

CORRUPTION = "corruption"  # the family of the common corruptions: unseen, but not adversarial


def worst_per_image(results: list[AttackResult], clean: torch.Tensor) -> torch.Tensor:
    """Per image, the minimum of the clean score and the score under every attack of
    ``results`` (float; for 0/1 scores: correct clean and robust to all of them)."""
    worst = clean.float().clone()
    for r in results:
        worst = torch.minimum(worst, r.robust.float())
    return worst


def _mean_worst(results: list[AttackResult], clean: torch.Tensor) -> float:
    return float(worst_per_image(results, clean).mean())


def aggregate(rep: PredictorReport) -> None:
    """Fill ``rep.aggregates`` (name -> (family, threat, accuracy)) and, for a randomized
    predictor, ``rep.ensemble``."""
    counted = [r for r in rep.results if r.threat in (Threat.SEEN, Threat.UNSEEN)]
    for fam in dict.fromkeys(r.family for r in counted if r.family != CORRUPTION):
        members = [r for r in counted if r.family == fam]
        rep.aggregates[f"worst_{fam}"] = (fam, members[0].threat, _mean_worst(members, rep.clean))
    seen = [r for r in counted if r.threat == Threat.SEEN]
    unseen = [r for r in counted if r.threat == Threat.UNSEEN and r.family != CORRUPTION and not r.defense]
    corruptions = [r for r in counted if r.family == CORRUPTION]
    if seen:
        rep.aggregates["worst_seen"] = ("worst_seen", Threat.SEEN, _mean_worst(seen, rep.clean))
    if unseen:
        rep.aggregates["union_unseen"] = ("union_unseen", Threat.UNSEEN, _mean_worst(unseen, rep.clean))
    if corruptions:
        rep.aggregates["union_corruptions"] = (CORRUPTION, Threat.UNSEEN, _mean_worst(corruptions, rep.clean))
        rep.aggregates["mean_corruption"] = (CORRUPTION, Threat.UNSEEN,
                                             float(np.mean([r.accuracy for r in corruptions])))
    aggregate_ensemble(rep, seen)


def aggregate_ensemble(rep: PredictorReport, seen: list[AttackResult]) -> None:
    """A randomized predictor's ensemble values: the vote's clean accuracy and, per image, its
    worst case over the ``seen`` attacks (correct clean and under each of them)."""
    if not rep.randomized or rep.clean_ensemble is None:
        return
    rep.ensemble["clean_ensemble"] = float(rep.clean_ensemble.float().mean())
    if seen and all(r.ensemble is not None for r in seen):
        worst = rep.clean_ensemble.clone()
        for r in seen:
            worst &= r.ensemble
        rep.ensemble["worst_seen_ensemble"] = float(worst.float().mean())


def aggregate_curve(rep: PredictorReport) -> None:
    """Fill ``rep.curve``: radius -> per-image worst case over the seen attacks run there."""
    for radius, results in sorted(rep.curve_results.items()):
        if results:
            rep.curve[radius] = _mean_worst(results, rep.clean)
