"""Attack throughput: our L∞ PGD-10 and APGD-CE (100 iterations) against torchattacks' on the
same model and batch, measured side by side in one run (interleaved repeats, median), so
machine load affects both alike. Prints images/s and the ratio ours/theirs (> 1: ours faster)
and the robust accuracy each reached (a sanity check that the work compared is the same).
"same work" rows disable our early stop (fooled images leaving the batch), so that every image
gets every step on both sides.

    python bench/attack_speed.py [--dataset digits] [--batch 256] [--repeats 3] [--device cpu]

The model is a small CNN (digits) trained for a few epochs here, so that most images are
correctly classified (both libraries attack only those in APGD) and the attacks do real work.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchattacks

from raysearch import data as data_mod
from raysearch.attacks import apgd, core, pgd
from raysearch.local import standard_classifier


def timed(fn, x, y, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x_adv = fn(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, x_adv


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    data = data_mod.load(args.dataset, args.data_dir)
    model = standard_classifier(data, epochs=8, device=device)
    eps = data.spec.eps_eval
    x, y = data_mod.eval_subset(data.test, args.batch, seed=0)
    x, y = x.to(device), y.to(device)
    ok = core.predict(model, x) == y
    x, y = x[ok], y[ok]  # APGD in both libraries attacks only correctly classified images
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)
    ta_apgd = torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce")
    # "same work": ours without dropping fooled images, i.e. every image gets every step
    pairs = {
        "PGD-10": (lambda a, b: pgd(model, a, b, eps, steps=10, restarts=1), ta_pgd),
        "PGD-10 same work": (lambda a, b: pgd(model, a, b, eps, steps=10, restarts=1, early_stop=False), ta_pgd),
        "APGD-CE": (lambda a, b: apgd(model, a, b, eps, n_iter=100, loss="ce"), ta_apgd),
        "APGD-CE same work": (lambda a, b: apgd(model, a, b, eps, n_iter=100, loss="ce", early_stop=False), ta_apgd),
    }
    print(f"{args.dataset}, {len(y)} images, eps {eps:.4g}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'attack':18s} {'ours img/s':>11s} {'theirs img/s':>13s} {'ratio':>7s} {'ours acc':>9s} {'theirs acc':>11s}")
    for name, (ours, theirs) in pairs.items():
        timed(ours, x[:8], y[:8], device)  # warm-up (allocator, kernels)
        timed(theirs, x[:8], y[:8], device)
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):
            dt, xo = timed(ours, x, y, device)
            t_ours.append(dt)
            dt, xt = timed(theirs, x, y, device)
            t_theirs.append(dt)
        acc_o = (core.predict(model, xo) == y).float().mean().item()
        acc_t = (core.predict(model, xt) == y).float().mean().item()
        io, it = len(y) / statistics.median(t_ours), len(y) / statistics.median(t_theirs)
        print(f"{name:18s} {io:11.1f} {it:13.1f} {io / it:7.2f} {acc_o:9.3f} {acc_t:11.3f}")


if __name__ == "__main__":
    main()
