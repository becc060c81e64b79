"""A check of a GPU machine before a search runs there: every defense trains, the final attack
suite runs, and the throughput is what the hardware allows. Needs only PyTorch and torchvision
(numpy comes with them) plus normflows and POT; Ray, Optuna and pyarrow are not imported, since
the defenses, the attacks and the suite runner do not use them. No network, no data set: the
images are synthetic, written in CIFAR-10's python format to a temporary folder and read back
through the project's own reader.

1. For each of the seven methods: its pre-trained components (atop's classifier and purifier,
   ijsat's flow) fitted on ``--steps`` batches only, then ijsat's gate before caching (the round
   trip G(F(x)) within 1/255 at 32×32 in strict fp32; the bits/dim bound is lifted, since a few
   steps on synthetic images cannot meet it) and its ε_z calibration; then ``--steps`` timed
   training steps at CIFAR shape with bf16 autocast and channels-last (the trial's
   ``--bf16 --channels-last``) after one step whose FLOPs are counted (``CountFlops``).
2. The final suite (``raysearch.evaluate.runner``, the default attacks plus the defense's own,
   EOT 20 for atop's randomized predictor) on ``--images`` test images for each seed defense's
   predictor (atop, ijsat, rvs, atld), against the predictor's own labels so that every image is
   attacked: a check of time and memory, not of robustness (a few steps train nothing).
3. ``bench/gpu_throughput.py``: PGD-10 AT throughput per speed option.

Printed: images/s, peak device memory and the fraction of the device's dense bf16 peak
(``gpu_throughput.PEAK_BF16_TFLOPS`` by GPU name, or ``--peak-tflops``). A method that fails is
reported in its row and the exit code is 1. ``--quick`` is a CPU-sized run of the same code
(small_cnn, tiny networks, batch 4, one step, cheap attacks on 4 images).

    python bench/gpu_check.py                      # a GPU: about 5-10 minutes
    python bench/gpu_check.py --quick --device cpu # the same path on CPU, under a minute
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from torch.nn import functional  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

import gpu_throughput  # noqa: E402
from raysearch import attacks, data as data_mod, perf  # noqa: E402
from raysearch.attacks import core  # noqa: E402
from raysearch.config import trial_config  # noqa: E402
from raysearch.evaluate.runner import evaluate_predictor  # noqa: E402
from raysearch.evaluate.suite import DEFAULT_EOT  # noqa: E402
from trainables import REGISTRY  # noqa: E402
from trainables.base import StepContext, config_fields  # noqa: E402
from trainables.common import frozen  # noqa: E402

SEED_DEFENSES = ("atop", "ijsat", "rvs", "atld")
VAL = 1000  # CIFAR-10's validation hold-out (raysearch.data.builtin.VAL_SIZE)
# component pre-training cut to one pass of --steps batches; ijsat's bits/dim bound lifted
COMPONENTS = {"cls_epochs": 1, "pretrain_epochs": 1, "flow_epochs": 1, "flow_max_bits_per_dim": math.inf}
# --quick: networks and inner loops small enough for a CPU
QUICK = {"arch": "small_cnn", "attack_steps": 2, "ft_attack_steps": 2, "sinkhorn_iters": 20, "gen_width": 16,
         "d_hidden": 32, "purifier_width": 8, "flow_blocks": 1, "flow_hidden": 16, "eval_steps": 2}
QUICK_SUITE = [("fgsm", {}), ("pgd_ce", {"steps": 2, "restarts": 1}), ("square", {"n_queries": 5})]


class CountFlops(TorchDispatchMode):
    """Matmul and convolution FLOPs of everything run inside, by ``FlopCounterMode``'s per-op
    formulas (``flop_registry``) but without its module tracker, whose backward hooks fail when
    ``autograd.grad`` differentiates with respect to a leaf that a module takes as its input
    (trades' and atld's attacks)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def write_cifar(root: Path, train: int, test: int, seed: int = 0) -> None:
    """Synthetic images in CIFAR-10's python format (five training batches and a test batch of
    pickled dicts, 3072 uint8 values per image in R, G, B planes): smooth colour fields with
    8-bit noise, random labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)

    def batch(n: int) -> dict:
        coarse = torch.rand(n, 3, 4, 4, generator=gen)
        x = functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
        x = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        pixels = (x * 255).round().to(torch.uint8).reshape(n, 3072).numpy()
        return {b"data": pixels, b"labels": torch.randint(0, 10, (n,), generator=gen).tolist()}

    per = -(-train // 5)
    for i in range(5):
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch(per)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else math.nan


def method_config(method: str, spec, args):
    """The method's defaults for CIFAR-10 with the cut component pre-training (and --quick's sizes)."""
    fields = config_fields(REGISTRY[method].Config)
    sets = {**COMPONENTS, **(QUICK if args.quick else {}), "batch_size": args.batch,
            "pretrain_batch_size": args.batch, "flow_batch_size": args.batch}
    return trial_config(method, spec, {}, {k: v for k, v in sets.items() if k in fields}, 1,
                        sets.get("arch", "auto"))


def train(method: str, d, device: torch.device, opts: perf.PerfOptions, args) -> dict:
    """Components on --steps batches, one counted step, --steps timed steps. Returns the row
    and the trained state for the suite."""
    defense = REGISTRY[method]
    cfg = method_config(method, d.spec, args)
    torch.manual_seed(0)
    nets = {k: m.to(device) for k, m in defense.build(cfg, d.spec).items()}

    def batches(size: int):
        return itertools.islice(data_mod.shuffled_batches(d.train, size, device, d.augment, d.flip), args.steps)

    t0 = time.perf_counter()
    for comp in defense.pretrained(cfg, d.spec):
        comp.fit(nets, cfg, d.spec, batches, device)
        if comp.check is not None:
            comp.check(nets, cfg, d.spec, d.val.images(torch.arange(args.images)).to(device), device)
    sync(device)
    components_s = time.perf_counter() - t0
    roles = defense.trainable(cfg)
    for role, m in nets.items():
        if role in roles:
            perf.prepare_module(m, opts).train()
        else:
            frozen(m)
    optims, scheds = defense.optimizers({r: nets[r] for r in roles}, cfg, 10 ** 6)
    ctx = StepContext(nets=nets, raw=nets, opts=optims, scheds=scheds, cfg=cfg, spec=d.spec, epoch=0, step=0,
                      steps_per_epoch=args.steps, device=device, autocast=perf.autocast(device, opts))
    data = [(perf.prepare_input(x, opts), y) for x, y in batches(args.batch)]
    with CountFlops() as counter:
        defense.train_step(ctx, *data[0])  # also the warm-up step
    ctx.step += 1
    sync(device)
    reset_peak(device)
    t0 = time.perf_counter()
    for x, y in itertools.islice(itertools.cycle(data), args.steps):
        defense.train_step(ctx, x, y)
        ctx.step += 1
    sync(device)
    seconds = time.perf_counter() - t0
    n = len(data[0][1])
    return {"ips": n * args.steps / seconds, "peak_mb": peak_mb(device), "flops": counter.total / n,
            "components_s": components_s, "defense": defense, "cfg": cfg, "nets": nets}


def suite_attacks(args):
    """None (the default suite and the defense's own attacks), or --quick's cheap versions."""
    if not args.quick:
        return None
    cheap = []
    for name, params in QUICK_SUITE:
        a = attacks.ATTACKS[name]
        rand = None if a.randomized is None else {**a.randomized, **params}
        cheap.append(dataclasses.replace(a, params={**a.params, **params}, randomized=rand))
    return [*cheap, "defense"]


def final_suite(trained: dict, d, device: torch.device, args) -> dict:
    defense, cfg, nets = trained["defense"], trained["cfg"], trained["nets"]
    for m in nets.values():
        m.eval()
    pred = defense.predictor(nets, cfg)
    eot = 2 if args.quick else DEFAULT_EOT
    x = d.test.images(torch.arange(min(args.images, len(d.test)))).to(device)
    torch.manual_seed(0)
    with torch.no_grad():
        y = core.predict(pred.model, x, pred.calls(eot))  # its own answers: every image is attacked
    reset_peak(device)
    t0 = time.perf_counter()
    rep = evaluate_predictor(pred, x, y, d.spec, attacks=suite_attacks(args), eot=eot,
                             surrogate=nets.get("classifier"), extra=defense.extra_attacks(nets, cfg))
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "ips": len(x) / seconds, "peak_mb": peak_mb(device), "attacks": len(rep.results),
            "n": len(x), "draws": pred.draws(eot) if pred.randomized else 1}


def fmt_mb(mb: float) -> str:
    return "-" if math.isnan(mb) else f"{mb:,.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="CPU-sized: small_cnn, tiny networks, cheap attacks")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 128; --quick 4)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per method (default 5; --quick 1)")
    p.add_argument("--images", type=int, default=None, help="test images of the final suite (default 100; --quick 4)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by GPU name)")
    p.add_argument("--no-throughput", action="store_true", help="skip bench/gpu_throughput.py")
    args = p.parse_args(argv)
    args.batch = args.batch or (4 if args.quick else 128)
    args.steps = args.steps or (1 if args.quick else 5)
    args.images = args.images or (4 if args.quick else 100)
    device = torch.device(args.device)
    started = time.perf_counter()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or (gpu_throughput.peak_for(name) if device.type == "cuda" else None)
    ray = sys.modules.get("ray") is not None
    print(f"gpu_check on {name}; torch {torch.__version__}; bf16 peak "
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}; ray imported: {ray}", flush=True)

    opts = perf.PerfOptions(bf16=True, channels_last=True)
    failed = []
    trained = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(Path(tmp), VAL + args.batch * (args.steps + 1), args.images)
        d = data_mod.load("cifar10", tmp)
        print(f"\ntraining, CIFAR shape 3×32×32, batch {args.batch}, bf16 autocast + channels-last, "
              f"{args.steps} timed steps after one counted step{' (--quick sizes)' if args.quick else ''}")
        print(f"  {'method':9s} {'images/s':>10s} {'peak MB':>9s} {'GFLOP/img':>10s} {'TFLOP/s':>8s} "
              f"{'of bf16 peak':>12s} {'components s':>12s}")
        for method in REGISTRY:
            try:
                row = trained[method] = train(method, d, device, opts, args)
            except Exception as e:  # one failed method must not hide the others' numbers
                failed.append(method)
                print(f"  {method:9s} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      flush=True)
                continue
            tflops = row["flops"] * row["ips"] / 1e12
            frac = f"{tflops / peak:.1%}" if peak else "-"
            print(f"  {method:9s} {row['ips']:10.1f} {fmt_mb(row['peak_mb']):>9s} {row['flops'] / 1e9:10.2f} "
                  f"{tflops:8.3f} {frac:>12s} {row['components_s']:12.1f}", flush=True)

        print(f"\nfinal suite ({'cheap attacks, --quick' if args.quick else 'default attacks + the defense own'}), "
              f"{args.images} test images, labels = the predictor's own answers")
        print(f"  {'method':9s} {'images/s':>10s} {'peak MB':>9s} {'seconds':>9s} {'attacks':>8s} {'EOT draws':>9s}")
        for method in SEED_DEFENSES:
            if method not in trained:
                continue
            try:
                row = final_suite(trained[method], d, device, args)
            except Exception as e:
                failed.append(f"{method} suite")
                print(f"  {method:9s} FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      flush=True)
                continue
            print(f"  {method:9s} {row['ips']:10.2f} {fmt_mb(row['peak_mb']):>9s} {row['seconds']:9.1f} "
                  f"{row['attacks']:8d} {row['draws']:9d}", flush=True)
    trained.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.no_throughput:
        print()
        tp = ["--device", args.device] + (["--peak-tflops", str(peak)] if args.peak_tflops else [])
        tp += ["--arch", "small_cnn", "--batch", "2", "--steps", "1", "--warmup", "0"] if args.quick else []
        gpu_throughput.main(tp)
    print(f"\ngpu_check: {time.perf_counter() - started:.0f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every method trained and every suite ran"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
