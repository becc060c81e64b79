"""The speed flags (raysearch.perf) train correctly on CPU: bf16 autocast, channels-last,
DataLoader workers, data held on the device, torch.compile; and the CLI passes them to a trial."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from raysearch import data as data_mod
from raysearch import perf, store
from raysearch.config import ExperimentConfig, trial_config
from raysearch.evaluate.proxy import proxy_eval
from raysearch.schema import Status
from trainables import REGISTRY
from trainables.base import StepContext


def train_digits(opts: perf.PerfOptions, epochs: int = 3, method: str = "standard", seed: int = 0):
    """The worker loop's per-batch path on CPU: perf.make_loader, prepare_module/prepare_input,
    the defense's own train_step under perf.autocast; returns (classifier, validation accuracy)."""
    torch.manual_seed(seed)
    data = data_mod.load("digits")
    spec, defense, device = data.spec, REGISTRY[method], torch.device("cpu")
    cfg = trial_config(method, spec, {}, {}, epochs, "auto")
    nets = defense.build(cfg, spec)
    for m in nets.values():
        perf.prepare_module(m, opts).train()
    loader = perf.make_loader(data.train.x, data.train.y, cfg.batch_size, device, opts, seed=seed)
    steps = len(loader)
    optims, scheds = defense.optimizers(nets, cfg, epochs * steps)
    ctx = StepContext(nets=nets, raw=nets, opts=optims, scheds=scheds, cfg=cfg, spec=spec, epoch=0, step=0,
                      steps_per_epoch=steps, device=device, autocast=perf.autocast(device, opts))
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for xb, yb in loader:
            x = perf.prepare_input(xb.to(device).float().div_(data.train.scale), opts)
            terms = defense.train_step(ctx, x, yb)
            assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
            ctx.step += 1
    f = nets["classifier"].eval()
    x, y = data_mod.eval_subset(data.val, 180)
    with torch.no_grad():
        acc = (f(x).argmax(1) == y).float().mean().item()
    return f, acc


@pytest.fixture(scope="module")
def baseline_acc() -> float:
    _, acc = train_digits(perf.PerfOptions(data_on_device="off"))
    assert acc > 0.85  # 3 epochs of standard training on 8×8 digits
    return acc


@pytest.mark.parametrize("opts", [
    perf.PerfOptions(bf16=True, data_on_device="off"),
    perf.PerfOptions(channels_last=True, data_on_device="off"),
    perf.PerfOptions(loader_workers=1, data_on_device="off"),
    perf.PerfOptions(data_on_device="on"),
], ids=["bf16", "channels_last", "loader_workers", "data_on_device"])
def test_each_flag_trains_digits_as_well_as_the_default(opts, baseline_acc):
    _, acc = train_digits(opts)
    assert acc > baseline_acc - 0.05, f"{opts}: {acc:.3f} vs default {baseline_acc:.3f}"


def test_bf16_autocast_runs_convs_in_bf16_and_keeps_weights_and_evaluation_fp32():
    spec = data_mod.SPECS["digits"]
    f = REGISTRY["standard"].build(trial_config("standard", spec, {}, {}, 1, "auto"), spec)["classifier"]
    x = torch.rand(8, 1, 8, 8)
    ctx = perf.autocast(torch.device("cpu"), perf.PerfOptions(bf16=True))
    with ctx():
        assert f(x).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in f.parameters())
    assert f(x).dtype == torch.float32  # outside the context (evaluation) nothing changes
    with perf.autocast(torch.device("cpu"), perf.PerfOptions())():
        assert f(x).dtype == torch.float32
    # the proxy attack runs outside ctx.autocast: its gradients and predictions are fp32
    pred = REGISTRY["standard"].predictor({"classifier": f.eval()}, None)
    clean, robust, n = proxy_eval(pred, x, torch.zeros(8, dtype=torch.long), 0.2, 3, 1)
    assert n == 8 and 0 <= robust <= clean <= 8


def test_channels_last_changes_layout_not_results():
    spec = data_mod.SPECS["cifar10"]
    torch.manual_seed(0)
    f = REGISTRY["standard"].build(trial_config("standard", spec, {}, {}, 1, "small_cnn"), spec)["classifier"].eval()
    x = torch.rand(4, 3, 32, 32)
    ref = f(x)
    opts = perf.PerfOptions(channels_last=True)
    perf.prepare_module(f, opts)
    conv = next(m for m in f.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    xc = perf.prepare_input(x, opts)
    assert xc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(f(xc), ref, rtol=1e-4, atol=1e-4)
    assert perf.prepare_input(torch.rand(4, 10), opts).shape == (4, 10)  # non-image input untouched


@pytest.mark.parametrize("world", [1, 3])
def test_device_batches_shard_like_distributed_sampler(world):
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    y = torch.arange(100)
    ranks = [perf.DeviceBatches(x, y, 8, rank, world, seed=5, drop_last=False) for rank in range(world)]
    seen_per_epoch = []
    for epoch in range(2):
        seen = []
        for r in ranks:
            r.set_epoch(epoch)
            batches = list(r)
            assert len(batches) == len(r) == len(ranks[0])  # every rank runs the same number of steps
            for xb, yb in batches:
                assert torch.equal(xb.view(-1).long(), yb)  # images stay paired with labels
                seen += yb.tolist()
        assert set(seen) == set(range(100))  # an epoch covers the split (padded by wrap-around)
        assert len(seen) == 34 * 3 if world == 3 else len(seen) == 100
        seen_per_epoch.append(seen)
    assert seen_per_epoch[0] != seen_per_epoch[1]  # reshuffled per epoch
    dropped = perf.DeviceBatches(x, y, 8, 0, world, drop_last=True)
    assert all(len(yb) == 8 for _, yb in dropped) and len(dropped) == (100 // world + (100 % world > 0)) // 8


def test_loader_choice_follows_the_flags():
    x, y = torch.zeros(64, 1, 8, 8, dtype=torch.uint8), torch.zeros(64, dtype=torch.long)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert isinstance(perf.make_loader(x, y, 16, cpu, perf.PerfOptions(data_on_device="on")), perf.DeviceBatches)
    dl = perf.make_loader(x, y, 16, cpu, perf.PerfOptions(loader_workers=2))
    assert isinstance(dl, torch.utils.data.DataLoader)
    assert dl.num_workers == 2 and dl.persistent_workers and not dl.pin_memory
    ddp = perf.make_loader(x, y, 16, cpu, perf.PerfOptions(), rank=1, world=2)
    assert isinstance(ddp.sampler, torch.utils.data.DistributedSampler) and len(ddp) == 2
    # auto: on the GPU for small splits only, never on CPU
    assert not perf.use_device_data(perf.PerfOptions(), cpu, 1000)
    assert perf.use_device_data(perf.PerfOptions(), cuda, 1000)
    assert not perf.use_device_data(perf.PerfOptions(), cuda, perf.AUTO_DEVICE_BYTES + 1)
    assert not perf.use_device_data(perf.PerfOptions(data_on_device="off"), cuda, 1000)


def test_options_read_from_an_experiment_dict_ignore_other_keys():
    opts = perf.PerfOptions.from_mapping({"bf16": True, "loader_workers": 2, "method": "pgd_at"})
    assert opts == dataclasses.replace(perf.PerfOptions(), bf16=True, loader_workers=2)


def test_options_read_from_an_experiment_config_as_the_worker_does():
    exp = ExperimentConfig(method="pgd_at", channels_last=True, compile=True, data_on_device="off")
    assert perf.PerfOptions.from_mapping(dataclasses.asdict(exp)) == perf.PerfOptions(
        channels_last=True, compile=True, data_on_device="off")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compile_trains_a_tiny_model_and_keeps_state_dict_keys():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 10))
    keys = set(net.state_dict())
    perf.prepare_module(net, perf.PerfOptions(compile=True))
    assert set(net.state_dict()) == keys  # checkpoints load into an uncompiled net
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_a_search_with_the_speed_flags_trains_and_records_them(results_root):
    """The standard search of ``results_root`` ran with --bf16 --channels-last --loader-workers 1."""
    exp_dir = results_root / "tiny-standard"
    config = json.loads((exp_dir / store.EXPERIMENT).read_text())["config"]
    assert config["bf16"] is True and config["channels_last"] is True and config["loader_workers"] == 1
    rows = store.read_rows(exp_dir / store.TRIALS)
    assert rows and all(r["status"] == Status.COMPLETED and r["epochs"] == 2 for r in rows)
    assert max(r["clean_acc"] for r in rows) > 0.5
    assert all(0 < r["startup_s"] < r["wall_s"] for r in rows)
