"""The evaluation's memory plan (raysearch.attacks.memory) and the chunked forward and backward
passes of raysearch.attacks.core: the measurement counts what is alive, the plan's arithmetic,
--eval-memory's parsing, chunked EOT gradients equal to one-graph ones, and an EOT attack under
a 64 MB plan whose measured peak stays within 64 MB where the unplanned attack's does not."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from raysearch import tune
from raysearch.attacks import core, memory, pgd
from raysearch.data.builtin import SPECS
from raysearch.evaluate import runner
from tests.evaluate_support import cheap
from trainables.base import Predictor

MB = 2 ** 20


class Net(nn.Module):
    """A small CNN on 3×32×32 images whose activations dominate its memory (16 channels at full
    resolution); ``sigma`` > 0 makes it randomized (Gaussian noise on the input each call)."""

    def __init__(self, sigma: float = 0.0, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.sigma = sigma
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))

    def forward(self, x):
        if self.sigma:
            x = x + self.sigma * torch.randn_like(x)
        return self.body(x)


def images(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ---------------------------------------------------------------- measurement

def test_tracker_counts_live_storages_once_and_not_known_ones():
    x = torch.zeros(MB // 4)  # 1 MB, allocated before: not counted
    with memory.PeakTracker(known=[x]) as t:
        a = torch.ones(MB // 4)  # +1 MB
        v = a.view(-1, 4)  # a view: no new memory
        b = a * 2  # +1 MB (peak 2)
        del a, v, b  # both freed
        c = torch.ones(MB // 4)  # +1 MB after the frees: the peak stays 2
        x.add_(1)  # in place on a known storage: nothing
        del c
    assert t.peak == 2 * MB
    assert t.current == 0


def test_probe_predicts_the_peak_of_a_larger_batch():
    """The cost is a straight line in the image-calls: fitted on 2 and 4 copies, it predicts 32."""
    net = frozen(Net())
    x, _ = images(32)
    cost = memory.measure([net], x)
    measured = memory.peak_bytes(lambda: memory._step(net, x[:1], 32), x.device, known=[x, *net.parameters()])
    assert cost.per_image > 0
    assert abs(measured - (cost.fixed + 32 * cost.per_image)) <= 0.05 * measured


def test_probe_leaves_the_random_streams_alone():
    net = frozen(Net(sigma=0.1))
    x, _ = images(2)
    torch.manual_seed(3)
    memory.measure([net], x)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


# ---------------------------------------------------------------- plan arithmetic and parsing

def test_chunk_fills_the_budget_beside_the_fixed_cost_and_the_attack_state():
    cost = memory.Cost(per_image=10 * MB, fixed=100 * MB)
    budget = math.ceil(1100 * MB / memory.FILL)  # 1100 MB to fill
    assert memory.chunk_for(cost, budget) == 100
    assert memory.chunk_for(cost, budget, held_bytes=500 * MB) == 50
    assert memory.chunk_for(cost, 50 * MB) == 1  # not even one fits: one at a time
    assert memory.chunk_for(cost, 10 ** 6 * MB) == core.MAX_BATCH
    assert memory.chunk_for(cost, 10 ** 6 * MB, limit=7) == 7


def test_budget_is_the_flag_capped_by_the_device():
    ram = memory.available_ram()
    assert memory.budget_bytes("cpu", "1MB") == MB
    assert memory.budget_bytes("cpu", 10 ** 15) == pytest.approx(memory.SAFETY * ram, rel=0.1)
    assert memory.budget_bytes("cpu") == pytest.approx(memory.CPU_SHARE * ram, rel=0.1)


def test_plan_counts_the_costlier_of_predictor_and_bpda():
    x, _ = images(4)
    small = frozen(Net())
    wide = frozen(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(64, 10)))
    assert memory.measure([wide], x).per_image > memory.measure([small], x).per_image
    plan = memory.plan(Predictor(small, bpda=wide), x, "1GB", held=4)
    assert plan.cost.per_image == memory.measure([wide], x).per_image
    assert plan.budget == 2 ** 30 and plan.held_bytes == 4 * x[0].nbytes * memory.STATE_COPIES
    assert plan.chunk == memory.chunk_for(plan.cost, plan.budget, plan.held_bytes)


@pytest.mark.parametrize("text, expected", [
    ("2GB", 2 * 2 ** 30), ("512MB", 512 * MB), ("512mb", 512 * MB), ("1.5g", int(1.5 * 2 ** 30)),
    ("300MiB", 300 * MB), ("64 MB", 64 * MB), ("4096", 4096), ("1T", 2 ** 40), ("", None), ("auto", None),
    (None, None), (1234, 1234)])
def test_parse_memory(text, expected):
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "0MB", "2PB", "GB", "1e9", "nan"])
def test_parse_memory_refuses_nonsense_in_one_line(text):
    with pytest.raises(memory.MemorySizeError) as e:
        memory.parse_memory(text)
    assert "--eval-memory" in str(e.value) and "\n" not in str(e.value)


def test_tune_refuses_a_bad_eval_memory(tmp_path, capsys):
    rc = tune.main(["--method", "pgd_at", "--eval-memory", "lots", "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines() == [err] and "--eval-memory" in err


def test_tune_records_eval_memory(tmp_path):
    args = tune.build_parser().parse_args(["--method", "pgd_at", "--eval-memory", "2GB",
                                           "--storage-path", str(tmp_path)])
    assert tune.make_config(args).eval_memory == "2GB"
    args = tune.build_parser().parse_args(["--method", "pgd_at", "--storage-path", str(tmp_path)])
    assert tune.make_config(args).eval_memory == ""


def test_evaluate_refuses_a_bad_eval_memory(capsys):
    from raysearch.evaluate.__main__ import main

    assert main(["--experiment", "nowhere", "--eval-memory", "12 bananas"]) == 2
    assert "--eval-memory" in capsys.readouterr().err


# ---------------------------------------------------------------- chunked passes are the same passes

@pytest.mark.parametrize("limit", [1, 5, 24, 60])
def test_pieces_cover_every_image_call_once_within_the_limit(limit):
    n, copies = 12, 5
    seen = torch.zeros(copies, n, dtype=torch.int64)
    row = 0
    for block in core.pieces(n, copies, limit):
        k = block[0][1]
        for sl, kk in block:
            assert kk == k and len(range(n)[sl]) * kk <= max(limit, 1)
            seen[row:row + k, sl] += 1
        row += k
    assert row == copies and bool((seen == 1).all())


@pytest.mark.parametrize("limit", [3, 7, 40, 4096])
def test_draws_and_scores_do_not_depend_on_the_limit(limit):
    net = frozen(Net())
    x, y = images(10)
    ref = core.draws(net, x, 3, max_batch=4096)
    assert torch.allclose(core.draws(net, x, 3, max_batch=limit), ref, atol=1e-6)
    with core.batch_limit(limit):
        assert core.max_batch() == limit
        assert torch.equal(core.score_calls(net, x, y, 3).fraction, core.score_calls(net, x, y, 3, max_batch=4096).fraction)
    assert core.max_batch() == core.MAX_BATCH


@pytest.mark.parametrize("loss", ["ce", "margin", "dlr", "targeted"])
@pytest.mark.parametrize("limit", [4, 9, 20])
def test_chunked_eot_gradient_equals_the_one_graph_gradient(loss, limit):
    """Slices of images (limit < 10) and blocks of copies (limit ≥ 10) give the loss, gradient and
    scores of one forward pass; per-image arguments of the loss stay with their images."""
    net = frozen(Net())
    x, y = images(10)
    fn = (partial(core.dlr_targeted_loss, target=(y + 1) % 10) if loss == "targeted" else core.LOSSES[loss])
    ref = core.loss_grad(net, x, y, fn, 4, max_batch=4096)
    out = core.loss_grad(net, x, y, fn, 4, max_batch=limit)
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_eot_gradient_keeps_the_draws_of_a_randomized_model():
    """Copies in blocks consume the random stream in the same order as one stacked pass."""
    net = frozen(Net(sigma=0.2))
    x, y = images(6)
    torch.manual_seed(1)
    ref = core.loss_grad(net, x, y, core.ce_loss, 8, max_batch=4096)
    torch.manual_seed(1)
    out = core.loss_grad(net, x, y, core.ce_loss, 8, max_batch=12)
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_parametric_attacks_do_not_depend_on_the_limit():
    """StAdv's gradient goes through the flow field: chunked at the image, then back through the
    warp, it is the same gradient."""
    from raysearch.attacks import stadv

    net = frozen(Net())
    x, y = images(6)
    ref = stadv(net, x, y, 1.0, steps=3)
    with core.batch_limit(4):
        assert torch.allclose(stadv(net, x, y, 1.0, steps=3), ref, atol=1e-5)


# ---------------------------------------------------------------- a planned attack stays in its budget

def test_planned_eot_attack_stays_within_a_64mb_budget_and_the_unplanned_one_does_not():
    """PGD with 20 EOT draws on 16 images of a randomized CNN: 320 image-calls per gradient. Under
    the plan for 64 MB its measured peak is at most 64 MB; stacked as one batch it is not."""
    net = frozen(Net(sigma=0.1))
    x, y = images(16)
    budget = 64 * MB
    plan = memory.plan(Predictor(net, randomized=True), x, "64MB", held=len(x))
    assert 1 < plan.chunk < 320  # a real split: neither one at a time nor everything at once
    known = [x, y, *net.parameters(), *net.buffers()]

    def attack(limit):
        with core.batch_limit(limit):
            return pgd(net, x, y, 8 / 255, steps=2, eot=20, seed=0)

    planned = memory.peak_bytes(lambda: attack(plan.chunk), x.device, known)
    unplanned = memory.peak_bytes(lambda: attack(core.MAX_BATCH), x.device, known)
    assert planned <= budget, (planned / MB, plan.describe())
    assert unplanned > budget, unplanned / MB


def test_the_final_suite_runs_on_its_plan():
    """evaluate_predictor plans from --eval-memory: no forward pass of the randomized predictor
    is larger than the planned chunk, while the attack asks for 20 draws of every image."""
    net = frozen(Net(sigma=0.1))
    x, y = images(12)
    sizes = []
    net.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    pred = Predictor(net, randomized=True)
    chunk = memory.plan_chunk(pred, x, "16MB", held=len(x))
    assert chunk < 20 * len(x)
    sizes.clear()
    runner.evaluate_predictor(pred, x, y, SPECS["cifar10"], attacks=[cheap("pgd_ce", steps=2)], eot=20,
                              eval_memory="16MB")
    assert sizes and max(sizes) <= chunk
