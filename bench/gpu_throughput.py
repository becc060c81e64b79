"""Training throughput of PGD-10 adversarial training (the project's ``pgd_at`` train_step) of
PreActResNet-18 on 32×32×3 input, per speed option, as images/s and as a fraction of the
device's bf16 dense peak.

Work per image is counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` records
the matmul/convolution FLOPs of one real step (10 attack forward+input-gradient passes, one
training forward+backward) on a small batch. Achieved TFLOP/s = FLOPs/image × images/s; the
fraction is against ``--peak-tflops`` or the table below (vendor dense bf16 tensor-core peak,
no sparsity). The batches are synthetic and already on the device, so this is the compute
ceiling of a trial's training, without data loading or the per-epoch evaluation.

Options compared (each also runs on CPU, slowly): fp32 (TF32 matmuls allowed on CUDA), bf16
(``--bf16``: ``ctx.autocast`` around what the defense wraps), +channels_last, and bf16 over the
whole step including the attack's crafting passes (what wrapping ``pgd_linf`` in ``ctx.autocast``
inside the defense would give); ``--compile`` adds torch.compile.

    .venv/bin/python bench/gpu_throughput.py                          # on a GPU: batch 128
    .venv/bin/python bench/gpu_throughput.py --batch 8 --steps 1 --warmup 1   # CPU smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from raysearch import data as data_mod, perf  # noqa: E402
from raysearch.config import trial_config  # noqa: E402
from trainables import REGISTRY  # noqa: E402
from trainables.base import StepContext  # noqa: E402

# dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H100": 756.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0,
    "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "RTX A6000": 155.0,
}


def peak_for(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # most specific name first
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def make_step(device, opts: perf.PerfOptions, batch: int, whole_step_bf16: bool, eps: float = 8 / 255,
              arch: str = "preact18"):
    """A pgd_at trial's training state on synthetic CIFAR-shaped data; returns step() -> None."""
    spec = data_mod.describe("cifar10")
    defense = REGISTRY["pgd_at"]
    cfg = trial_config("pgd_at", spec, {"attack_steps": 10, "eps_train": eps}, {}, 1, arch)
    torch.manual_seed(0)
    nets = defense.build(cfg, spec)
    for m in nets.values():
        perf.prepare_module(m.to(device), opts).train()
    optims, scheds = defense.optimizers(nets, cfg, 10 ** 6)
    ctx = StepContext(nets=nets, raw=nets, opts=optims, scheds=scheds, cfg=cfg, spec=spec, epoch=0, step=0,
                      steps_per_epoch=1, device=device, autocast=perf.autocast(device, opts))
    x = perf.prepare_input(torch.rand(batch, 3, 32, 32, device=device), opts)
    y = torch.randint(0, 10, (batch,), device=device)
    outer = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if whole_step_bf16 else contextlib.nullcontext

    def step():
        with outer():
            defense.train_step(ctx, x, y)
        ctx.step += 1

    return step


def flops_per_image(device, batch: int = 4, arch: str = "preact18") -> float:
    step = make_step(device, perf.PerfOptions(), batch, False, arch=arch)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device, opts, batch, warmup, steps, whole_step_bf16=False, arch: str = "preact18") -> float:
    step = make_step(device, opts, batch, whole_step_bf16, arch=arch)
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: table by GPU name)")
    p.add_argument("--compile", action="store_true", help="also measure bf16 + channels_last + torch.compile")
    p.add_argument("--arch", default="preact18", help="classifier (small_cnn: a quick CPU run)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        import platform

        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or (peak_for(name) if device.type == "cuda" else None)
    fpi = flops_per_image(device, min(args.batch, 4), args.arch)
    print(f"gpu_throughput: PGD-10 AT step (pgd_at train_step), {args.arch}, 32×32×3, batch {args.batch}, "
          f"on {name}; torch {torch.__version__}")
    print(f"work: {fpi / 1e9:.2f} GFLOP per image per step (counted); bf16 peak: "
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")
    variants = [
        ("fp32" + (" (TF32)" if device.type == "cuda" else ""), perf.PerfOptions(), False),
        ("--bf16", perf.PerfOptions(bf16=True), False),
        ("--bf16 --channels-last", perf.PerfOptions(bf16=True, channels_last=True), False),
        ("--bf16 --channels-last, attack crafted in bf16 too", perf.PerfOptions(bf16=True, channels_last=True), True),
    ]
    if args.compile:
        variants.append(("--bf16 --channels-last --compile, attack in bf16",
                         perf.PerfOptions(bf16=True, channels_last=True, compile=True), True))
    base = None
    for label, opts, whole in variants:
        ips = measure(device, opts, args.batch, args.warmup, args.steps, whole, args.arch)
        base = base or ips
        tflops = fpi * ips / 1e12
        frac = f"{tflops / peak:6.1%} of bf16 peak" if peak else "peak unknown"
        print(f"  {label:52s} {ips:9.1f} images/s  ×{ips / base:5.2f}  {tflops:8.2f} TFLOP/s  {frac}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
