"""Evaluation memory per method at CIFAR-10 shape: what one image costs in an EOT attack step and
the chunk the memory plan (``raysearch.attacks.memory``) picks for it.

For every registered method, its default config (budgets scaled to CIFAR-10) and the networks
CIFAR-10 gets (``--arch auto``: preact18, atop's 64-wide purifier), untrained (memory does not
depend on the weights), in eval mode with frozen parameters as the final suite rebuilds them:

* ``MB/call``: the plan's probe, forward+backward of one image-call (draws per call included);
* ``MB/call EOT``: measured on a real EOT gradient (``core.loss_grad``, ``calls(20)`` stacked
  calls of each of 2 images in one pass), peak over image-calls, a check on the probe;
* ``MB/image``: one image's whole EOT-20 gradient step, ``calls(20)`` × MB/call;
* chunks (image-calls per forward/backward) the plan picks for a 40 GB and an 80 GB card (80% of
  it free) and for this machine's default CPU budget, beside a 500-image attack batch, with the
  image-calls that would fit without the cap of ``core.MAX_BATCH`` in brackets.

    python bench/eval_memory.py [--device cpu|cuda] [--threads N]

Measured on CPU with the plan's tensor tracker, on CUDA with the allocator's peak. Ray-free.
"""
from __future__ import annotations

import argparse

import torch

from raysearch.attacks import core, memory
from raysearch.config import default_config
from raysearch.data.builtin import SPECS
from trainables import REGISTRY

EOT = 20  # draws per gradient of the final suite's randomized protocol
BATCH = 500  # images per attack call in the final suite (raysearch.evaluate --batch-size)
GB = 2 ** 30
MB = 2 ** 20


def predictor(method: str, spec, device):
    defense = REGISTRY[method]
    cfg = default_config(method, spec)
    nets = defense.build(cfg, spec)
    for net in nets.values():
        net.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
    return defense.predictor(nets, cfg)


def eot_step_per_call(pred, x, y) -> float:
    """Peak bytes per image-call of one EOT gradient with every call stacked in one pass."""
    calls = pred.calls(EOT)
    known = [x, y] + [t for m in (pred.model, pred.bpda) if m is not None for t in memory._tensors_of(m)]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        peak = memory.peak_bytes(lambda: core.loss_grad(pred.model, x, y, core.ce_loss, calls, max_batch=10 ** 9),
                                 x.device, known)
    return peak / (len(x) * calls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = SPECS["cifar10"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, spec.channels, spec.size, spec.size, generator=g).to(device)
    y = torch.randint(0, spec.classes, (2,), generator=g).to(device)
    held = BATCH * x[0].nbytes * memory.STATE_COPIES
    local = memory.budget_bytes(device)
    where = "CUDA" if device.type == "cuda" else "CPU"
    print(f"CIFAR-10 shape {tuple(x.shape[1:])}, device {device}, EOT {EOT}, attack batch {BATCH}, "
          f"{where} budget {local / GB:.2f} GB, chunk cap {core.MAX_BATCH}")
    print(f"| method | draws/call | calls (EOT {EOT}) | MB/call | MB/call EOT | MB/image | 40 GB card | "
          f"80 GB card | {where} budget |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for method in REGISTRY:
        pred = predictor(method, spec, device)
        cost = memory.measure([m for m in (pred.model, pred.bpda) if m is not None], x)
        per_eot = eot_step_per_call(pred, x, y)
        calls = pred.calls(EOT)

        def chunk(budget: int) -> str:
            return f"{memory.chunk_for(cost, budget, held)} ({memory.chunk_for(cost, budget, held, limit=10 ** 9)})"

        print(f"| {method} | {pred.draws_per_call if pred.randomized else 1} | {calls} | "
              f"{cost.per_image / MB:.2f} | {per_eot / MB:.2f} | {calls * cost.per_image / MB:.1f} | "
              f"{chunk(int(memory.SAFETY * 40 * GB))} | {chunk(int(memory.SAFETY * 80 * GB))} | {chunk(local)} |",
              flush=True)
        del pred
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("chunk: image-calls per forward/backward the plan picks (in brackets: what fits without the cap)")


if __name__ == "__main__":
    main()
