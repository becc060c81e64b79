"""What the final evaluation reports: the ``evals.parquet`` rows of one predictor's report,
its printed table (with the robustness curve, where one was asked for), and the
clean-vs-accuracy fronts recomputed per attack over the trials.

Robustness-curve rows are stage "final" like the rest, named ``<attack>@<radius>`` (see
``raysearch.schema.curve_attack``; ``worst_seen@0.1`` the worst case over seen attacks at 0.1)
with the radius in ``eps``: a plain name (``worst_seen``, ``pgd_ce``) is always the ε_eval
result, as it was before curves existed, and (trial, stage, epoch, attack) stays a unique key."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from raysearch import pareto, schema
from raysearch.schema import Stage, Threat, curve_attack
from raysearch.evaluate.results import PredictorReport


def report_rows(rep: PredictorReport, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for evals.parquet (``base`` holds experiment, trial_id, method, dataset)."""

    def row(attack: str, family: str, threat: str, norm: str, eps: float, accuracy: float, eot_samples: int,
            seconds: float) -> dict[str, Any]:
        return schema.eval_row(**base, stage=Stage.FINAL, epoch=schema.FINAL_EPOCH, attack=attack, family=family,
                               threat=threat, norm=norm, eps=eps, accuracy=accuracy, n=rep.n,
                               eot_samples=eot_samples, seconds=seconds)

    rows = [row("clean", "clean", Threat.CLEAN, "none", 0.0, rep.clean_acc, rep.eot, 0.0)]
    if rep.randomized:
        rows.append(row("clean_per_draw", "clean", Threat.CLEAN, "none", 0.0, rep.clean_per_draw,
                        rep.draws_per_call, 0.0))
    for r in rep.results:
        rows.append(row(r.attack, r.family, r.threat, r.norm, r.eps, r.accuracy, r.eot_samples, r.seconds))
    for name, (fam, threat, acc) in rep.aggregates.items():
        rows.append(row(name, fam, threat, "mixed", math.nan, acc, rep.eot, 0.0))
    for radius, results in rep.curve_results.items():
        for r in results:
            rows.append(row(curve_attack(r.attack, radius), r.family, r.threat, r.norm, r.eps, r.accuracy,
                            r.eot_samples, r.seconds))
        if radius in rep.curve:
            rows.append(row(curve_attack("worst_seen", radius), "worst_seen", Threat.SEEN, "mixed", radius,
                            rep.curve[radius], rep.eot, 0.0))
    return rows


def format_table(trial_id: str, method: str, rep: PredictorReport) -> str:
    lines = [f"trial {trial_id} ({method}): n={rep.n}, "
             f"{'randomized, EOT ' + str(rep.eot) if rep.randomized else 'deterministic'}",
             f"  {'attack':26s} {'threat':7s} {'eps':>8s} {'acc':>7s} {'sec':>7s}",
             f"  {'clean':26s} {'clean':7s} {'':>8s} {rep.clean_acc:7.3f} {'':>7s}"]
    if rep.randomized:
        lines.append(f"  {'clean (single draw)':26s} {'clean':7s} {'':>8s} {rep.clean_per_draw:7.3f}")
    for r in rep.results:
        lines.append(f"  {r.attack:26s} {r.threat:7s} {r.eps:8.4g} {r.accuracy:7.3f} {r.seconds:7.1f}")
    for name, (_, threat, acc) in rep.aggregates.items():
        lines.append(f"  {name:26s} {threat:7s} {'':>8s} {acc:7.3f}")
    lines.append(f"  masking flags: {', '.join(rep.flags) if rep.flags else 'none'}")
    if rep.curve:
        lines.append("  robustness curve (worst case over seen attacks):")
        lines.append(f"    {'eps':>8s} {'acc':>7s}")
        for radius, acc in rep.robustness_curve().items():
            at_eval = "  (eps_eval)" if radius not in rep.curve else ""
            lines.append(f"    {radius:8.4g} {acc:7.3f}{at_eval}")
    return "\n".join(lines)


def fronts(reports: dict[str, PredictorReport]) -> tuple[dict[str, list[str]], dict[str, float]]:
    """For every attack and aggregate (then worst_seen at each radius of the robustness curve):
    the trials on the (clean, accuracy) front and its hypervolume above (0, 0)."""
    names = list(dict.fromkeys([n for rep in reports.values()
                                for n in [r.attack for r in rep.results] + list(rep.aggregates)]
                               + [curve_attack("worst_seen", radius) for rep in reports.values()
                                  for radius in sorted(rep.curve)]))
    ids = list(reports)
    on_front, hv = {}, {}
    for name in names:
        pts = np.array([[reports[t].clean_acc, reports[t].accuracy(name)] for t in ids], dtype=float)
        mask = pareto.pareto_mask(pts)
        on_front[name] = [t for t, m in zip(ids, mask) if m]
        hv[name] = pareto.hypervolume_2d(pts[mask]) if mask.any() else 0.0
    return on_front, hv


def format_fronts(on_front: dict[str, list[str]], hv: dict[str, float], reports: dict[str, PredictorReport]) -> str:
    lines = ["front (clean vs accuracy under each attack), recomputed on the test subset:"]
    for name, ids in on_front.items():
        pts = ", ".join(f"{t} ({reports[t].clean_acc:.3f}/{reports[t].accuracy(name):.3f})" for t in ids)
        lines.append(f"  {name:26s} hv {hv[name]:.3f}  {pts}")
    return "\n".join(lines)
