"""Cost of one training step of every registered defense, relative to ``standard`` and to
``pgd_at``, on the same model, data and batch, measured side by side in one run.

    python bench/step_cost.py [--dataset digits] [--batch 128] [--steps 5] [--repeats 3]

Pre-trained components (atop's classifier and purifier, ijsat's flow) are trained once into a
temporary cache before timing and are not part of a step's cost. Methods are timed in
interleaved rounds (every method once per round) and the median per step is reported, so load
on the machine affects all methods alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysearch import data  # noqa: E402
from raysearch.local import local_context  # noqa: E402
from trainables import REGISTRY  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    args = p.parse_args()
    d = data.load(args.dataset, args.data_dir)
    x, y = d.train.images(torch.arange(args.batch)), d.train.y[:args.batch]
    with tempfile.TemporaryDirectory() as cache:
        ctxs = {m: local_context(m, d, Path(cache), 10_000, batch_size=args.batch) for m in REGISTRY}
        for defense, ctx in ctxs.values():  # warm-up step, not timed
            defense.train_step(ctx, x, y)
        times: dict[str, list[float]] = {m: [] for m in ctxs}
        for _ in range(args.repeats):
            for m, (defense, ctx) in ctxs.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    defense.train_step(ctx, x, y)
                times[m].append((time.perf_counter() - t0) / args.steps)
    med = {m: statistics.median(t) for m, t in times.items()}
    print(f"one training step, {args.dataset}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds of {args.steps} steps (default configs)")
    print(f"{'method':<10} {'ms/step':>9} {'× standard':>11} {'× pgd_at':>9}")
    for m in sorted(med, key=med.get):
        print(f"{m:<10} {1000 * med[m]:>9.1f} {med[m] / med['standard']:>11.2f} {med[m] / med['pgd_at']:>9.2f}")


if __name__ == "__main__":
    main()
