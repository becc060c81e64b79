"""Running the suite on one predictor (raysearch.evaluate.runner): EOT for randomized
predictors, per-call scoring (checked against closed forms on a randomized toy), deterministic
predictors scored as before, the defense's own attacks, the robustness curve."""
from __future__ import annotations

import math

import torch
from torch import nn

from raysearch import attacks
from raysearch.attacks import core, memory
from raysearch.evaluate import aggregates, checks, report, runner, suite
from raysearch.schema import Threat
from tests.evaluate_support import Noisy, cheap
from trainables.base import Predictor

Z95 = 1.96  # two-sided 95% normal quantile


class Coin(nn.Module):
    """Two classes; every call answers class 0 (the label) with probability ``p``, independently
    per image and call. A call averages the logits ([1, 0] right, [0, 1] wrong) of ``votes``
    such draws, as atop averages n_masks transforms. It ignores the image: no attack moves it."""

    def __init__(self, p: float, votes: int = 1):
        super().__init__()
        self.p, self.votes = p, votes

    def forward(self, x):
        right = (torch.rand(self.votes, len(x), device=x.device) < self.p).float().mean(0)
        return torch.stack([right, 1 - right], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


def _survival(k: int, p: float) -> list[float]:
    """P(Binomial(k, p) >= j) for j = 0..k+1."""
    pmf = [math.comb(k, j) * p ** j * (1 - p) ** (k - j) for j in range(k + 1)]
    return [sum(pmf[j:]) for j in range(k + 2)]


def _min_of_fractions(k: int, p: float, m: int) -> tuple[float, float]:
    """Mean and variance of min(A_1, ..., A_m) / k for independent A_i ~ Binomial(k, p): one
    image's value under m - 1 attacks that cannot move it (the clean score is the m-th)."""
    tail = [s ** m for s in _survival(k, p)]
    probs = [tail[j] - tail[j + 1] for j in range(k + 1)]
    mean = sum(j / k * q for j, q in enumerate(probs))
    return mean, sum((j / k) ** 2 * q for j, q in enumerate(probs)) - mean ** 2


def _within(measured: float, expected: float, sd: float) -> None:
    assert abs(measured - expected) <= Z95 * sd, (measured, expected, sd)


def test_randomized_predictor_gets_eot(robust_model, test_images, digits):
    x, y = test_images
    calls = []
    noisy = Noisy(robust_model, 0.1)
    noisy.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    rep = runner.evaluate_predictor(Predictor(noisy, randomized=True), x, y, digits.spec,
                                    attacks=[cheap("pgd_ce", steps=3, restarts=1)], eot=20)
    assert rep.randomized and rep.eot == 20 and rep.scoring_calls == 20
    assert all(r.eot_samples == 20 and r.scoring_calls == 20 for r in rep.results)
    # every PGD step saw 20 draws of each attacked image
    assert max(calls) >= 20 * int(rep.clean.sum())
    rows = report.report_rows(rep, {"experiment": "e", "trial_id": "x", "method": "m", "dataset": "digits"})
    assert {"clean", "clean_per_draw", "clean_ensemble", "worst_seen_ensemble"} <= {r["attack"] for r in rows}
    assert checks.FLAG_RANDOM not in rep.flags


def test_eot_counts_draws_of_a_predictor_that_averages_several(robust_model, test_images, digits):
    """A call that already averages 4 draws is made ceil(20 / 4) = 5 times per gradient: 20
    draws, recorded as 20. Scoring is per call, on 20 fresh calls of each image."""
    x, y = test_images
    calls = []
    noisy = Noisy(robust_model, 0.1)
    noisy.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    rep = runner.evaluate_predictor(Predictor(noisy, randomized=True, draws_per_call=4), x, y, digits.spec,
                                    attacks=[cheap("pgd_ce", steps=3, restarts=1)], eot=20)
    assert rep.eot == 20 and all(r.eot_samples == 20 for r in rep.results)
    attacked = int(((rep.clean > 0) | rep.clean_ensemble).sum())
    # clean scoring, after the memory plan's probes: 20 calls, one stacked pass
    assert rep.scoring_calls == 20 and calls[len(memory.PROBE)] == 20 * len(x)
    assert 5 * attacked in calls and max(calls[len(memory.PROBE) + 1:]) <= 20 * attacked  # attack steps; scoring


def test_per_call_and_ensemble_accuracies_match_their_closed_forms(digits):
    """A coin that is right with probability p per call: per-call accuracy p, the vote of k
    calls right with probability q = P(Binomial(k, p) > k/2) (k odd: no ties); per image under
    attacks that cannot move it, the minimum of independent call fractions, and for the vote
    q^(attacks + 1). Each measured mean lies within 1.96 standard deviations of the closed form."""
    p, k, n = 0.6, 21, 400
    torch.manual_seed(0)
    x, y = torch.rand(n, 1, 8, 8), torch.zeros(n, dtype=torch.long)
    seen = [cheap("pgd_ce", steps=2, restarts=1), "fgsm"]
    rep = runner.evaluate_predictor(Predictor(Coin(p), randomized=True), x, y, digits.spec, attacks=seen, eot=k)
    assert rep.scoring_calls == k and [r.scoring_calls for r in rep.results] == [k, k]
    _within(rep.clean_acc, p, math.sqrt(p * (1 - p) / (n * k)))
    q = _survival(k, p)[k // 2 + 1]
    _within(rep.accuracy("clean_ensemble"), q, math.sqrt(q * (1 - q) / n))
    assert rep.accuracy("clean_ensemble") > rep.clean_acc + 0.15  # the vote is not the deployed predictor
    mean, var = _min_of_fractions(k, p, 2)
    for r in rep.results:
        _within(r.accuracy, mean, math.sqrt(var / n))
        assert (r.robust <= rep.clean).all()
    mean, var = _min_of_fractions(k, p, 3)
    _within(rep.accuracy("worst_seen"), mean, math.sqrt(var / n))
    _within(rep.accuracy("worst_seen_ensemble"), q ** 3, math.sqrt(q ** 3 * (1 - q ** 3) / n))


def test_a_call_that_averages_draws_is_scored_as_one_call(digits):
    """atop-like: each call averages 3 coin draws (its n_masks), so a call is right when at
    least 2 of them are: per-call accuracy P(Binomial(3, p) >= 2), not p. EOT 20 draws is 7
    calls per gradient; 20 calls (60 draws) score each image."""
    p, n = 0.6, 200
    torch.manual_seed(1)
    x, y = torch.rand(n, 1, 8, 8), torch.zeros(n, dtype=torch.long)
    coin, rows = Coin(p, votes=3), []
    coin.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    rep = runner.evaluate_predictor(Predictor(coin, randomized=True, draws_per_call=3), x, y, digits.spec,
                                    attacks=[cheap("pgd_ce", steps=1, restarts=1)], eot=20)
    assert (rep.eot, rep.scoring_calls) == (21, 20) and rows[len(memory.PROBE)] == 20 * n  # after the probes
    attacked = int(((rep.clean > 0) | rep.clean_ensemble).sum())
    assert 7 * attacked in rows
    per_call = _survival(3, p)[2]
    _within(rep.clean_acc, per_call, math.sqrt(per_call * (1 - per_call) / (n * 20)))
    assert abs(rep.clean_acc - p) > 3 * math.sqrt(p * (1 - p) / (n * 20))


def test_deterministic_predictors_are_scored_on_one_call_as_before(robust_model, test_images, digits):
    """k = 1: every per-image score is 0 or 1, the clean score is ``predict``'s correctness, an
    attack's is correct clean and on the attack's image (what the suite always reported), and
    there are no ensemble values."""
    x, y = test_images
    pgd = cheap("pgd_ce", steps=5, restarts=1)
    rows = []
    hook = robust_model.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    try:
        rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=[pgd, "fgsm"])
    finally:
        hook.remove()
    assert rows[len(memory.PROBE)] == len(x) and rep.scoring_calls == 1  # after the memory plan's probes
    assert rep.clean_ensemble is None and not rep.ensemble
    assert torch.equal(rep.clean, (core.predict(robust_model, x) == y).float())
    idx = rep.clean.bool().nonzero().squeeze(1)
    x_adv = attacks.run(pgd, robust_model, x[idx], y[idx], digits.spec.eps_eval, eot=1, seed=0)
    before = torch.zeros(len(x), dtype=torch.bool)
    before[idx] = core.predict(robust_model, x_adv) == y[idx]
    assert torch.equal(rep.results[0].robust, before.float()) and rep.results[0].ensemble is None
    both = before & rep.results[1].robust.bool() & rep.clean.bool()
    assert rep.accuracy("worst_seen") == float(both.float().mean())
    assert {r["attack"] for r in report.report_rows(rep, {"experiment": "e", "trial_id": "x", "method": "m",
                                                          "dataset": "digits"})}.isdisjoint(
        {"clean_per_draw", "clean_ensemble", "worst_seen_ensemble"})


def test_defense_extra_attacks_are_unseen(robust_model, test_images, digits):
    x, y = test_images
    seen = []

    def shift(model, xb, yb, eps):
        seen.append(eps)
        return (xb + eps).clamp(0, 1)

    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"],
                                    extra={"brighten": shift})
    r = {r.attack: r for r in rep.results}["brighten"]
    assert r.threat == "unseen" and seen == [digits.spec.eps_eval]
    assert r.eps == digits.spec.eps_eval and r.norm == suite.DEFENSE
    # reported apart, as its own family: the unseen axis holds the suite's attacks only
    assert rep.aggregates["worst_brighten"][2] == r.accuracy and "union_unseen" not in rep.aggregates
    assert r.defense and (r.iterations, r.restarts, r.queries) == (-1, -1, -1)
    # an attack with its own budget (ijsat's latent radius) is recorded with it
    shift.eps, shift.norm = 0.5, "latent_linf"
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=["fgsm"],
                                    extra={"brighten": shift})
    r = {r.attack: r for r in rep.results}["brighten"]
    assert (r.eps, r.norm) == (0.5, "latent_linf")


def test_robustness_curve_runs_the_seen_attacks_per_radius_and_changes_nothing_at_eps_eval(
        robust_model, test_images, digits):
    """With ``eps_list`` the seen attacks run again at each radius (ε_eval = 0.2 not twice);
    every result at ε_eval, the aggregates and the flags are those of a run without it; on the
    adversarially trained model the worst case falls with the radius."""
    x, y = test_images
    suite_ = ["fgsm", cheap("pgd_ce", steps=20, restarts=1), cheap("pgd_l2", steps=10, restarts=1),
              cheap("pgd_eps_x2", steps=10)]
    plain = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite_)
    rep = runner.evaluate_predictor(Predictor(robust_model), x, y, digits.spec, attacks=suite_,
                                    eps_list=(0.3, 0.05, 0.2, 0.1))
    assert [r.attack for r in rep.results] == [r.attack for r in plain.results]
    assert all(torch.equal(a.robust, b.robust) and a.eps == b.eps for a, b in zip(rep.results, plain.results))
    assert rep.aggregates == plain.aggregates and rep.flags == plain.flags and not plain.curve
    assert list(rep.curve_results) == [0.05, 0.1, 0.3] and list(rep.curve) == [0.05, 0.1, 0.3]
    for radius, results in rep.curve_results.items():
        assert [(r.attack, r.threat, r.eps) for r in results] == [("fgsm", Threat.SEEN, radius),
                                                                  ("pgd_ce", Threat.SEEN, radius)]
        assert rep.curve[radius] == float(aggregates.worst_per_image(results, rep.clean).mean())
        assert rep.accuracy(f"worst_seen@{radius:g}") == rep.curve[radius]
    curve = rep.robustness_curve()
    assert list(curve) == [0.05, 0.1, 0.2, 0.3] and curve[0.2] == plain.accuracy("worst_seen")
    accs = list(curve.values())
    assert all(b <= a for a, b in zip(accs, accs[1:])), curve
    assert accs[0] <= rep.clean_acc and accs[-1] < accs[0]


def test_a_run_that_repeats_an_earlier_one_takes_its_images_instead_of_running_again(robust_model, test_images,
                                                                                    digits):
    """On a randomized predictor ``pgd_ce`` (one restart: the EOT draws stand in for restarts)
    and the ε-sweep's ``pgd_eps_x1`` are the same PGD-50: the second is not run again (no
    forward pass, 0 seconds, the first's per-image scores under its own name and threat). On a
    deterministic predictor ``pgd_ce`` has five restarts, so both run."""
    x, y = test_images[0][:40], test_images[1][:40]
    names = ["pgd_ce", "pgd_eps_x1", "gaussian_noise_s1", "gaussian_noise_s3"]  # corruptions: no ε (NaN)
    for randomized in (True, False):
        model = Noisy(robust_model, 0.1) if randomized else robust_model
        rep = runner.evaluate_predictor(Predictor(model, randomized=randomized), x, y, digits.spec,
                                        attacks=names, eot=2 if randomized else 1)
        rows = {r.attack: r for r in rep.results}
        assert set(rows) == set(names)
        first, second = rows["pgd_ce"], rows["pgd_eps_x1"]
        assert (first.threat, second.threat, second.family) == (Threat.SEEN, Threat.CHECK, "eps_sweep")
        if randomized:
            assert second.seconds == 0.0 and torch.equal(first.robust, second.robust)
        else:
            assert second.seconds > 0 and first.restarts == 5 and second.restarts == 1
        assert rows["gaussian_noise_s1"].seconds > 0 and rows["gaussian_noise_s3"].seconds > 0
