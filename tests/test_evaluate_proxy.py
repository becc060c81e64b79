"""The per-epoch proxy (raysearch.evaluate.proxy): counts, per-call scoring of randomized
predictors (checked against closed forms on a randomized toy), robust at most clean per image;
the worst case over cross-entropy and margin PGD (a saturated model that CE-PGD calls robust), over
the targeted runs (a decoy class that untargeted PGD follows) and
over the real gradient and BPDA (a clipping test-time step that zeroes the real gradient); its
own random streams; and the epochs the worker runs it on (--eval-every)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raysearch import worker
from raysearch.attacks import ATTACKS
from raysearch.evaluate import proxy
from trainables.base import Predictor

Z95 = 1.96  # two-sided 95% normal quantile


class Fixed(nn.Module):
    """Always class 0 (a constant, so no perturbation changes the answer)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 2) + 0 * x.flatten(1).sum(1, keepdim=True)


class Rows(nn.Module):
    """Counts the images it is called on (EOT copies are stacked into one call)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


class Coin(nn.Module):
    """Two classes; every call answers class 0 with probability ``p``, independently per image
    and call, whatever the image."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        right = (torch.rand(len(x), device=x.device) < self.p).float()
        return torch.stack([right, 1 - right], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


class Threshold(nn.Module):
    """Class 0 where the mean pixel is above 0.5, else class 1: a step, so every input gradient
    is zero and PGD never leaves its random start."""

    def forward(self, x):
        above = (x.flatten(1).mean(1) > 0.5).float()
        return torch.stack([above, 1 - above], 1) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_proxy_counts_clean_and_robust():
    x = torch.rand(10, 1, 4, 4)
    y = torch.tensor([0] * 7 + [1] * 3)
    clean, robust, n = proxy.proxy_eval(Predictor(Fixed()), x, y, 0.1, 3, 1, batch_size=4)
    assert (clean, robust, n) == (7.0, 7.0, 10.0)


def test_randomized_predictors_are_scored_on_eot_calls_deterministic_on_one():
    """A deterministic predictor is scored on one call per image; a randomized one that averages
    4 draws per call, asked for 20 draws, on 5 calls (every call counted by the rows it sees).
    At radius 0 only the clean score runs (every attacked image would be the clean one)."""
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    model = Rows(Fixed())
    proxy.proxy_eval(Predictor(model), x, y, 0.0, 3, 20, classes=2)
    assert model.rows == 6
    model.rows = 0
    proxy.proxy_eval(Predictor(model, randomized=True, draws_per_call=4), x, y, 0.0, 3, 20, classes=2)
    assert model.rows == 5 * 6


def test_every_proxy_attack_runs_and_scores_on_the_calls_of_its_budget():
    """At a radius above 0 a deterministic predictor runs each proxy attack (one restart of
    ``steps`` gradient steps, one forward pass each as the constant model is never fooled, and
    one scoring call), and through the BPDA pipeline when there is one; the registry's
    cross-entropy and margin PGD and targeted APGD are the proxy's attacks. On two classes the
    targeted DLR loss is not defined, so APGD-T is left out."""
    assert proxy.PROXY_ATTACKS == ("pgd_cw", "pgd_ce", "apgd_t")
    assert [ATTACKS[a].params["loss"] for a in proxy.PROXY_ATTACKS[:2]] == ["margin", "ce"]
    assert ATTACKS["apgd_t"].params["n_targets"] == 9
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    model, bpda = Rows(Fixed()), Rows(Fixed())
    proxy.proxy_eval(Predictor(model), x, y, 0.1, 3, 1, classes=2)
    assert model.rows == 6 + 2 * (3 + 1) * 6
    model.rows = 0
    assert [r.name for r in proxy.proxy_runs(Predictor(model, bpda=bpda), 2)] == [
        "pgd_cw", "pgd_ce", "pgd_cw+bpda", "pgd_ce+bpda"]
    proxy.proxy_eval(Predictor(model, bpda=bpda), x, y, 0.1, 3, 1, classes=2)
    assert (model.rows, bpda.rows) == (6 + 2 * (3 + 1) * 6 + 2 * 6, 2 * 3 * 6)


def test_the_targeted_runs_join_on_four_classes_or_more_and_never_on_randomized_predictors():
    """APGD-T runs on 4 classes or more, through BPDA too, one run per wrong class up to 9; a
    randomized predictor gets the final suite's rand protocol, which has no APGD-T."""
    model, bpda = Fixed(), Fixed()
    assert [r.name for r in proxy.proxy_runs(Predictor(model, bpda=bpda), 10)] == [
        "pgd_cw", "pgd_ce", "apgd_t", "pgd_cw+bpda", "pgd_ce+bpda", "apgd_t+bpda"]
    assert proxy.runs_per_image(Predictor(model), 10) == 1 + 1 + 9
    assert proxy.runs_per_image(Predictor(model), 4) == 1 + 1 + 3
    assert proxy.runs_per_image(Predictor(model, bpda=bpda), 100) == 2 * (1 + 1 + 9)
    assert proxy.runs_per_image(Predictor(model), 3) == 2
    assert [r.name for r in proxy.proxy_runs(Predictor(model, randomized=True), 10)] == ["pgd_cw", "pgd_ce"]


class Decoy(nn.Module):
    """Four classes, the true one 0 at logit 0. Class 1 (logit ≈ −1) is the likeliest wrong
    class but out of reach (weight 0.01 on the first 16 pixels); class 2 is reachable (weight 100
    on the last 16 pixels, all at 0.5: +0.15 each lifts its logit from −230 to +10) but its
    softmax weight e^−230 is 0 in float32; class 3 sits at −1000. Untargeted margin PGD follows
    the likeliest wrong class only and cross-entropy's gradient has no class-2 part, so both
    leave every image correct; targeting class 2 fools every one. Known answer: robust 0."""

    def forward(self, x):
        f = x.flatten(1)
        z1 = 0.01 * f[:, :16].sum(1) - 1.0
        z2 = 100 * f[:, 16:].sum(1) - 1030.0
        return torch.stack([torch.zeros_like(z1), z1, z2, torch.full_like(z1, -1000.0)], 1)


def test_the_targeted_runs_find_what_untargeted_pgd_misses():
    n = 20
    x = torch.cat([torch.rand(n, 1, 4, 4), torch.full((n, 1, 4, 4), 0.5)], 2)  # 16 + 16 pixels
    y = torch.zeros(n, dtype=torch.long)
    pred = Predictor(Decoy())
    assert proxy.proxy_eval(pred, x, y, 0.15, 20, 1, attacks=("pgd_cw", "pgd_ce")) == (n, n, n)
    assert proxy.proxy_eval(pred, x, y, 0.15, 20, 1) == (n, 0.0, n)


def test_the_proxy_attack_lowers_accuracy_and_stays_in_the_ball(trained, digits):
    """The registered PGD through the proxy: on an undefended digits model robust accuracy falls
    far below clean at ε 0.2; at ε 0 the two agree."""
    from raysearch import data as data_mod

    model = trained["standard"][1]["classifier"]
    x, y = data_mod.eval_subset(digits.val, 100)
    clean, robust, n = proxy.proxy_eval(Predictor(model), x, y, 0.2, 10, 1)
    assert n == 100 and clean > 90 and robust < clean - 40
    assert proxy.proxy_eval(Predictor(model), x, y, 0.0, 10, 1)[:2] == (clean, clean)
    seeded = [proxy.proxy_eval(Predictor(model), x, y, 0.2, 10, 1, seed=3)[1] for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_randomized_proxy_sums_per_call_fractions():
    """A coin right with probability p per call, scored on k = 21 calls (eot 21): the clean sum
    over n images is n·p in expectation, the robust sum n·E[min(A, B, C)/k] for independent
    A, B, C ~ Binomial(k, p) (the clean and the two attacks' fractions; no attack can move the
    coin). Both are within 1.96 standard deviations; the worker divides the sums by n."""
    p, k, n = 0.7, 21, 300
    x, y = torch.rand(n, 1, 4, 4), torch.zeros(n, dtype=torch.long)
    pred = Predictor(Coin(p), randomized=True)
    clean, robust, count = proxy.proxy_eval(pred, x, y, 0.1, 2, k)
    assert count == n and robust <= clean
    assert abs(clean / n - p) <= Z95 * math.sqrt(p * (1 - p) / (n * k))
    scores = 1 + len(proxy.proxy_runs(pred, 2))
    pmf = [math.comb(k, j) * p ** j * (1 - p) ** (k - j) for j in range(k + 1)]
    tail = [sum(pmf[j:]) ** scores for j in range(k + 2)]  # P(min(A, B, C) >= j)
    probs = [tail[j] - tail[j + 1] for j in range(k + 1)]
    mean = sum(j / k * q for j, q in enumerate(probs))
    sd = math.sqrt((sum((j / k) ** 2 * q for j, q in enumerate(probs)) - mean ** 2) / n)
    assert abs(robust / n - mean) <= Z95 * sd, (robust / n, mean, sd)


def test_robust_never_exceeds_clean_per_image():
    """An image wrong clean counts as not robust even where the attack's image happens to be
    right (the clean image is inside the ball): PGD on a zero-gradient step model stays at its
    random start, which crosses the threshold for some images classified wrong clean."""
    x, y = torch.full((40, 1, 4, 4), 0.499), torch.zeros(40, dtype=torch.long)
    model = Threshold()
    attack = ATTACKS["pgd_ce"]
    x_adv = attack.fn(model, x, y, 0.1, eot=1, seed=0, **{**attack.params, "steps": 3, "restarts": 1})
    assert (model(x_adv).argmax(1) == y).sum() > 0
    assert proxy.proxy_eval(Predictor(model), x, y, 0.1, 3, 1) == (0.0, 0.0, 40.0)


class Saturated(nn.Module):
    """Class 0 below a mean pixel of 0.5, class 1 above, with logits scaled so far that the
    softmax is exactly one-hot in float32 (a margin of 2000 at a mean of 0.4): the cross-entropy
    gradient is exactly zero, the hazard of saturated or smoothed outputs, while the margin's
    gradient still points across the boundary."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return 1e4 * torch.cat([-m, m], 1)


def test_a_saturated_model_ce_pgd_calls_robust_is_not_robust_under_the_proxy():
    """Half the images have every pixel at 0.4 (ε 0.15 reaches 0.55, across the boundary), half
    at 0.2 (0.35 at most: robust). Known answers: clean 1, true robust 0.5. Cross-entropy PGD
    alone never moves (zero gradient, and the random start's mean stays far from 0.5) and says
    1.0; the proxy says 0.5, what the margin attack finds."""
    n = 40
    x = torch.cat([torch.full((n // 2, 1, 4, 4), 0.4), torch.full((n // 2, 1, 4, 4), 0.2)])
    y = torch.zeros(n, dtype=torch.long)
    pred = Predictor(Saturated())
    ce_only = proxy.proxy_eval(pred, x, y, 0.15, 10, 1, attacks=("pgd_ce",))
    margin_only = proxy.proxy_eval(pred, x, y, 0.15, 10, 1, attacks=("pgd_cw",))
    clean, robust, count = proxy.proxy_eval(pred, x, y, 0.15, 10, 1)
    assert ce_only == (n, n, n)
    assert (clean, robust, count) == (n, n / 2, n)
    assert robust == margin_only[1]
    worst = proxy.proxy_scores(pred, x, y, 0.15, 10, 1).robust
    assert worst[: n // 2].sum() == 0 and worst[n // 2:].sum() == n / 2


class ClipStep(nn.Module):
    """A test-time step that clips, like IMT pushing background pixels below 0:
    s(x) = clamp(2(x − 0.5), 0, 1), whose gradient is zero at every pixel at or below 0.5.
    ``bpda``: the same forward pass with the step taken as the identity in the backward pass."""

    def __init__(self, bpda: bool = False):
        super().__init__()
        self.bpda = bpda

    def forward(self, x):
        s = (2 * (x - 0.5)).clamp(0, 1)
        return x + (s - x).detach() if self.bpda else s


class Clipped(nn.Module):
    """The classifier after the step: class 1 when the mean of s(x) is above 0.05, else class 0."""

    def __init__(self, bpda: bool = False):
        super().__init__()
        self.step = ClipStep(bpda)

    def forward(self, x):
        m = self.step(x).flatten(1).mean(1, keepdim=True) - 0.05
        return 10 * torch.cat([-m, m], 1)


def test_a_clipping_test_time_step_is_broken_through_bpda_not_through_its_real_gradient():
    """Every pixel at 0.4, ε 0.15: pixels raised to 0.55 make s(x) = 0.1 everywhere (class 1), so
    no image is robust. The real gradient is zero except at the pixels the random start lifts
    above 0.5 (1 in 6 on average), and those alone reach a mean s of about 0.017 < 0.05, so
    real-gradient PGD fools none (it would need more than half of 64 pixels lifted, probability
    below 1e-9). Through the BPDA pipeline every pixel moves up and every image falls. A
    predictor without a BPDA pipeline keeps all its images; with one the proxy finds 0."""
    n = 30
    x, y = torch.full((n, 1, 8, 8), 0.4), torch.zeros(n, dtype=torch.long)
    real = ATTACKS["pgd_cw"]
    params = {**real.params, "steps": 10, "restarts": 1}
    assert (Clipped()(real.fn(Clipped(), x, y, 0.15, seed=0, **params)).argmax(1) == y).all()
    assert proxy.proxy_eval(Predictor(Clipped()), x, y, 0.15, 10, 1) == (n, n, n)
    assert proxy.proxy_eval(Predictor(Clipped(), bpda=Clipped(bpda=True)), x, y, 0.15, 10, 1) == (n, 0.0, n)


def test_the_proxy_leaves_the_training_random_streams_alone_and_repeats_itself():
    """A randomized predictor draws from the global stream inside the proxy, which is forked and
    seeded: the caller's stream is where it was, and the same seed gives the same scores."""
    x, y = torch.rand(50, 1, 4, 4), torch.zeros(50, dtype=torch.long)
    pred = Predictor(Coin(0.6), randomized=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = proxy.proxy_eval(pred, x, y, 0.1, 2, 8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert proxy.proxy_eval(pred, x, y, 0.1, 2, 8, seed=5) == first
    assert proxy.proxy_eval(pred, x, y, 0.1, 2, 8, seed=6) != first


def test_the_worker_runs_the_proxy_every_n_epochs_and_after_the_last():
    """--eval-every 3 over 8 epochs: the worker's per-epoch step measures after epochs 3, 6 and 8
    only; the epochs between report the last measurement unchanged with the epoch it comes from
    (proxy_epoch), NaN accuracies and epoch 0 before the first one; the history (kept in
    the checkpoint, replayed into evals.parquet) holds the measured epochs only. A resumed worker
    group reports from that history; a diverged epoch is not measured."""
    measured = []

    def measure():
        measured.append(len(measured))
        return {"clean_acc": 0.9, "robust_acc": 0.1 * len(measured), "eval_n": 10, "eval_s": 1.5}

    history: list[dict] = []
    reports = [worker.epoch_proxy(e, 8, 3, history, measure) for e in range(1, 9)]
    assert [r["proxy_epoch"] for r in reports] == [0, 0, 3, 3, 3, 6, 6, 8]
    assert len(measured) == 3 and [h["epoch"] for h in history] == [3, 6, 8]
    assert math.isnan(reports[0]["clean_acc"]) and reports[0]["eval_s"] == 0.0
    assert [r["robust_acc"] for r in reports[2:]] == pytest.approx([0.1, 0.1, 0.1, 0.2, 0.2, 0.3])
    assert reports[3] == reports[4] == reports[2] and reports[6] == reports[5]
    resumed = history[:2]  # a worker group restarted from the checkpoint of epoch 6
    assert worker.epoch_proxy(7, 8, 3, resumed, measure)["proxy_epoch"] == 6
    assert worker.epoch_proxy(8, 8, 3, resumed, measure, skip=True)["proxy_epoch"] == 6
    assert len(measured) == 3
    assert [e for e in range(1, 9) if proxy.proxy_due(e, 8, 1)] == list(range(1, 9))
    assert [e for e in range(1, 6) if proxy.proxy_due(e, 5, 2)] == [2, 4, 5]


def test_the_default_schedule_is_three_proxies_last_only_for_randomized_every_epoch_with_a_scheduler():
    """--eval-every's default: a deterministic defense is measured after epochs 3, 6 and 8 of 8
    (and every epoch of a 2-epoch trial), a randomized one after the last only, and under an
    early-stopping scheduler every epoch, which it ranks trials by."""
    def due(randomized, epochs, scheduler="none"):
        every = proxy.default_eval_every(randomized, epochs, scheduler)
        return [e for e in range(1, epochs + 1) if proxy.proxy_due(e, epochs, every)]

    assert due(False, 8) == [3, 6, 8] and due(False, 2) == [1, 2] and due(False, 30) == [10, 20, 30]
    assert due(True, 8) == [8]
    assert due(False, 8, "moasha") == due(True, 8, "mopbt") == list(range(1, 9))
