"""What the final evaluation reports: the ``evals.parquet`` rows of one predictor's report,
its printed table (with the robustness curve, where one was asked for), and the
clean-vs-accuracy fronts recomputed per attack over the trials.

Robustness-curve rows are stage "final" like the rest, named ``<attack>@<radius>`` (see
``raysearch.schema.curve_attack``; ``worst_seen@0.1`` the worst case over seen attacks at 0.1)
with the radius in ``eps``: a plain name (``worst_seen``, ``pgd_ce``) is always the ε_eval
result, as it was before curves existed, and (trial, stage, epoch, attack) stays a unique key.

Every accuracy is per call (see ``raysearch.evaluate.results``). A randomized predictor also
gets ``clean_per_draw`` (kept for readers of earlier files: now equal to ``clean``, the mean
per-call accuracy) and, as labelled extras that no front is drawn on, ``clean_ensemble`` and
``worst_seen_ensemble``: the vote of its scoring calls, an ensemble nobody deploys.

Every row says how it was measured: an attack's ``iterations``, ``restarts`` and ``queries`` as it
ran (``raysearch.evaluate.suite.settings``; -1 where the suite does not know them, a defense's
own attack), 0 for all three on clean and aggregate rows, and the report's ``protocol`` (rand for
a randomized predictor)."""
from __future__ import annotations

import math
from typing import Any, Mapping


from raysearch import schema
from raysearch.schema import Stage, Threat, curve_attack
from raysearch.evaluate.results import AttackResult, PredictorReport


def report_rows(rep: PredictorReport, base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows for evals.parquet (``base`` holds experiment, trial_id, method, dataset)."""

    def row(attack: str, family: str, threat: str, norm: str, eps: float, accuracy: float, eot_samples: int,
            seconds: float, scoring_calls: int | None = None, run: AttackResult | None = None) -> dict[str, Any]:
        # an ensemble value is one vote over the scoring calls: it is scored as one call
        calls = rep.scoring_calls if scoring_calls is None else scoring_calls
        spent = dict(iterations=0, restarts=0, queries=0) if run is None else \
            dict(iterations=run.iterations, restarts=run.restarts, queries=run.queries)
        return schema.eval_row(**base, stage=Stage.FINAL, epoch=schema.FINAL_EPOCH, attack=attack, family=family,
                               threat=threat, norm=norm, eps=eps, accuracy=accuracy, n=rep.n,
                               eot_samples=eot_samples, scoring_calls=calls, **spent, protocol=rep.protocol,
                               seconds=seconds)

    rows = [row("clean", "clean", Threat.CLEAN, "none", 0.0, rep.clean_acc, rep.eot, 0.0)]
    if rep.randomized:
        rows.append(row("clean_per_draw", "clean", Threat.CLEAN, "none", 0.0, rep.clean_acc,
                        rep.draws_per_call, 0.0))
        if "clean_ensemble" in rep.ensemble:
            rows.append(row("clean_ensemble", "clean", Threat.CLEAN, "none", 0.0, rep.ensemble["clean_ensemble"],
                            rep.eot, 0.0, scoring_calls=1))
    for r in rep.results:
        rows.append(row(r.attack, r.family, r.threat, r.norm, r.eps, r.accuracy, r.eot_samples, r.seconds,
                        r.scoring_calls, run=r))
    for name, (fam, threat, acc) in rep.aggregates.items():
        rows.append(row(name, fam, threat, "mixed", math.nan, acc, rep.eot, 0.0))
    if "worst_seen_ensemble" in rep.ensemble:
        rows.append(row("worst_seen_ensemble", "worst_seen", Threat.SEEN, "mixed", math.nan,
                        rep.ensemble["worst_seen_ensemble"], rep.eot, 0.0, scoring_calls=1))
    for radius, results in rep.curve_results.items():
        for r in results:
            rows.append(row(curve_attack(r.attack, radius), r.family, r.threat, r.norm, r.eps, r.accuracy,
                            r.eot_samples, r.seconds, run=r))
        if radius in rep.curve:
            rows.append(row(curve_attack("worst_seen", radius), "worst_seen", Threat.SEEN, "mixed", radius,
                            rep.curve[radius], rep.eot, 0.0))
    return rows


def format_table(trial_id: str, method: str, rep: PredictorReport) -> str:
    lines = [f"trial {trial_id} ({method}): n={rep.n}, "
             f"{'randomized, EOT ' + str(rep.eot) if rep.randomized else 'deterministic'}",
             f"  {'attack':26s} {'threat':7s} {'eps':>8s} {'acc':>7s} {'sec':>7s}",
             f"  {'clean':26s} {'clean':7s} {'':>8s} {rep.clean_acc:7.3f} {'':>7s}"]
    for r in rep.results:
        lines.append(f"  {r.attack:26s} {r.threat:7s} {r.eps:8.4g} {r.accuracy:7.3f} {r.seconds:7.1f}")
    for name, (_, threat, acc) in rep.aggregates.items():
        lines.append(f"  {name:26s} {threat:7s} {'':>8s} {acc:7.3f}")
    if rep.ensemble:
        lines.append(f"  accuracies above are per call, over {rep.scoring_calls} fresh calls per image; "
                     "the vote of those calls (an ensemble, not the deployed predictor):")
        for name, acc in rep.ensemble.items():
            threat = Threat.CLEAN if name == "clean_ensemble" else Threat.SEEN
            lines.append(f"  {name:26s} {threat:7s} {'':>8s} {acc:7.3f}")
    lines.append(f"  masking flags: {', '.join(rep.flags) if rep.flags else 'none'}")
    if rep.checks:
        lines.append("  masking checks (images showing the sign / most that noise explains):")
        lines += [f"    {name:30s} {c.count:5d} / {c.limit:6.1f} of {c.n}{'  FIRED' if c.fired else ''}"
                  for name, c in rep.checks.items()]
    if rep.curve:
        lines.append("  robustness curve (worst case over seen attacks):")
        lines.append(f"    {'eps':>8s} {'acc':>7s}")
        for radius, acc in rep.robustness_curve().items():
            at_eval = "  (eps_eval)" if radius not in rep.curve else ""
            lines.append(f"    {radius:8.4g} {acc:7.3f}{at_eval}")
    return "\n".join(lines)
