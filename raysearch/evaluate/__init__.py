"""Evaluation of trained predictors: the cheap per-epoch proxy that steers the search, and the
final evaluation, the full attack suite on the candidates of a finished search (the proxy front
and the trials near it, ``candidates``).

Final evaluation: for each candidate trial the trained predictor is rebuilt from its last
checkpoint and attacked on a fixed subset of the *test* split (fixed seed), with every attack
of the suite (``raysearch.attacks``): seen (L∞ at the trial's ε_eval: FGSM, PGD-CE/-CW with
restarts, APGD-CE/-DLR/-T, Square, transfer from the bare classifier) and unseen (L2
PGD/APGD, StAdv, ReColor, JPEG, common corruptions, and the attacks the defense itself offers).

Honesty rules:
* Randomized predictors are attacked with EOT (gradients averaged over ``eot`` draws, 20 by
  default; a predictor that averages k draws per call, atop's n_masks, is called ceil(eot / k)
  times per gradient) and scored per call, as deployed: each image scores the fraction of
  max(20, ceil(eot / k)) fresh calls that answer correctly, the set the mean. The vote of those
  calls is reported apart as ``clean_ensemble`` and ``worst_seen_ensemble``, never as an axis.
* Predictors with a BPDA pipeline are attacked through the real backward pass *and* through
  BPDA with every white-box attack (only the seen ones if the predictor is also randomized);
  each is a row, and every aggregate takes the worst case over them. Randomized predictors
  get the attack settings of AutoAttack's rand version (see ``raysearch.attacks``).
* An image's value under an attack is min(clean score, attacked score). Per family the number
  is the mean of the per-image minimum over the family's attacks and variants; over seen
  attacks "worst_seen", over the unseen adversarial attacks "union_unseen" (robust only if it
  survives every one; the same set for every method: corruptions are "union_corruptions" and
  "mean_corruption", a defense's own attacks their own families). Fronts per attack are drawn
  over every trial with final rows (``fronts``).
* Gradient-masking checks, stored with their counts (``checks``): per image, Square, transfer
  or BPDA attacks fooling images that no white-box attack fools, PGD at ε = 1 leaving images
  correct, zero input gradients and saturated softmax outputs; on accuracies, FGSM beating PGD,
  CE-loss attacks far weaker than margin/DLR ones, accuracy not falling with ε and the search's
  per-epoch proxy overstating the final worst case, each against its 95% interval; and
  randomness that the predictor does not declare (two calls on the same input disagree).

Robustness curve (``eps_list``, optional): the seen attacks of the suite (those with an ε_eval
budget) run again at each further L∞ radius of the list, on the same images; a radius equal to
the trial's ε_eval is not run twice. Costly: each further radius is one more run of the seen
suite, most of the evaluation's time. Everything at ε_eval (the aggregates, the flags, the
final_* columns, the tables and fronts) is computed exactly as without a curve.

Results: one row per trial × attack in ``evals.parquet`` (stage "final", epoch −1; rows of the
same trials from an earlier final evaluation are replaced, per-epoch rows are kept), and the
columns ``final_clean_acc``, ``final_worst_seen``, ``final_union_unseen``, ``masking_flags``
(';'-joined, '' if none) and ``masking_checks`` (JSON, every check with its count and limit) in
``trials.parquet``. Curve rows are named ``<attack>@<radius>``
(``raysearch.schema.curve_attack``): ``pgd_ce@0.1``, and ``worst_seen@0.1``, the per-image worst
case over the seen attacks at 0.1, each with the radius in ``eps``. A plain name is always the
ε_eval result, so a reader of ``attack == "worst_seen"`` cannot pick up another radius.

Modules (this package imports none of them, so a worker importing ``proxy`` loads nothing else):

* ``proxy`` — the per-epoch proxy: clean and L∞ PGD accuracy at ε_eval, with EOT;
* ``suite`` — the suite plan: attacks and groups, budgets, the runs per predictor (surrogate,
  skipped for randomized predictors, BPDA variants), the robustness curve's radii;
* ``runner`` — running the suite on one predictor (``evaluate_predictor``, ``PredictorReport``);
* ``aggregates`` — per-family worst cases, worst_seen, union_unseen, mean corruption accuracy,
  worst_seen per radius of the curve;
* ``checks`` — range and budget checks, the randomness check, the masking checks and flags;
* ``report`` — evals.parquet rows and printed tables;
* ``candidates`` — which trials the suite attacks: front, band (default), all or K;
* ``fronts`` — the fronts under the final attacks over every trial with stored final rows;
* ``results`` — what evaluating one predictor produces (``AttackResult``, ``PredictorReport``);
* ``trials`` — the experiment level: one job per trial, writing the results;
* ``__main__`` — the CLI: ``python -m raysearch.evaluate --experiment <storage>/<name>
  [--trials ID ...] [--subset N] [--eot N] [--attacks NAME|GROUP ...] [--eps-list EPS ...]``.
"""
