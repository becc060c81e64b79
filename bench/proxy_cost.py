"""What the per-epoch proxy costs against training, per method, at the search's defaults.

    python bench/proxy_cost.py [--dataset digits] [--epochs 8] [--eval-every N] [--eval-steps N]
                               [--eval-eot N] [--eval-size N] [--threads 1] [--startup-s 8]

Each registered defense at its default config (default architecture; pre-trained components
trained once into ``--cache``) trains ``--epochs`` epochs in this process, without Ray, the way a
trial's worker does (the worker's loader and batch size, the defense's train_step); after every
epoch the proxy the worker runs (``raysearch.evaluate.proxy``: clean, PGD-margin, PGD-CE and APGD-T,
through the BPDA pipeline too where there is one, EOT for randomized predictors) is timed on the
validation subset of the default size. The proxy is timed after every epoch because its cost
depends on the model (an image leaves the attacks once its score is 0); a trial pays it on the
epochs ``--eval-every`` selects. Printed per method: seconds per training epoch and per proxy
(medians over the epochs), their ratio, and the proxy's share of a trial's work (training plus
the proxies of the epochs the search's ``--eval-every`` default, or the given one, selects) and
of a trial's time with a fixed start-up added
(``--startup-s``, ≈ 8 s per trial in bench/ray_overhead.py). One torch thread by default, as a
trial's worker has with one CPU.
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

from raysearch import data as data_mod, perf  # noqa: E402
from raysearch.config import ExperimentConfig  # noqa: E402
from raysearch.evaluate import proxy  # noqa: E402
from raysearch.local import local_context  # noqa: E402
from trainables import REGISTRY  # noqa: E402

DEFAULTS = ExperimentConfig(method="standard")


def time_method(method: str, d: data_mod.Data, cache: Path, args) -> dict:
    """Per-epoch training seconds, per-epoch proxy seconds and the last proxy's accuracies."""
    probe = REGISTRY[method].Config()
    loader = perf.make_loader(d.train.x, d.train.y, probe.batch_size, torch.device("cpu"), perf.PerfOptions())
    steps = max(len(loader), 1)
    defense, ctx = local_context(method, d, cache, total_steps=args.epochs * steps, epochs=args.epochs)
    ctx.steps_per_epoch = steps
    x_eval, y_eval = data_mod.eval_subset(d.val, args.eval_size, seed=0)
    eps = d.spec.eps_eval
    train_s, proxy_s, acc = [], [], (0.0, 0.0)
    for epoch in range(args.epochs):
        ctx.epoch = epoch
        t0 = time.perf_counter()
        for xb, yb in loader:
            defense.train_step(ctx, xb.float().div_(d.train.scale), yb)
            ctx.step += 1
        train_s.append(time.perf_counter() - t0)
        pred = defense.predictor(ctx.raw, ctx.cfg)
        modes = {k: m.training for k, m in ctx.raw.items()}
        for m in ctx.raw.values():
            m.eval()
        t0 = time.perf_counter()
        clean, robust, n = proxy.proxy_eval(pred, x_eval, y_eval, eps, args.eval_steps, args.eval_eot,
                                            classes=d.spec.classes)
        proxy_s.append(time.perf_counter() - t0)
        for k, m in ctx.raw.items():
            m.train(modes[k])
        acc = (clean / n, robust / n)
    every = args.eval_every or proxy.default_eval_every(defense.randomized, args.epochs)
    due = [e for e in range(1, args.epochs + 1) if proxy.proxy_due(e, args.epochs, every)]
    return {"train": statistics.median(train_s), "proxy": statistics.median(proxy_s),
            "train_total": sum(train_s), "proxy_total": sum(proxy_s[e - 1] for e in due), "proxies": len(due),
            "runs": proxy.runs_per_image(pred, d.spec.classes), "calls": pred.calls(args.eval_eot), "acc": acc, "n": len(y_eval)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--methods", default=",".join(REGISTRY), help="comma-separated (default: every method)")
    p.add_argument("--epochs", type=int, default=DEFAULTS.max_epochs)
    p.add_argument("--eval-every", type=int, default=0, help="default: the search's per method")
    p.add_argument("--eval-steps", type=int, default=DEFAULTS.eval_steps)
    p.add_argument("--eval-eot", type=int, default=DEFAULTS.eval_eot)
    p.add_argument("--eval-size", type=int, default=DEFAULTS.eval_size)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--startup-s", type=float, default=8.0, help="fixed seconds per trial (Ray start-up)")
    p.add_argument("--cache", default="", help="component cache folder (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    d = data_mod.load(args.dataset, args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache or tmp)
        rows = {}
        for m in args.methods.split(","):
            torch.manual_seed(0)
            rows[m] = time_method(m, d, cache, args)
            print(f"  {m}: done", file=sys.stderr, flush=True)
    print(f"proxy cost, {args.dataset}, {args.epochs} epochs, {args.eval_steps} steps per attack run (runs: per "
          f"image, targets included), "
          f"EOT {args.eval_eot}, {next(iter(rows.values()))['n']} validation images, {args.threads} thread(s)")
    head = (f"{'method':<9} {'runs':>4} {'calls':>5} {'proxies':>7} {'epoch s':>8} {'proxy s':>8} {'proxy/epoch':>11} "
            f"{'share of work':>13} {f'share +{args.startup_s:g}s':>12} {'clean':>6} {'robust':>6}")
    print(head)
    for m, r in rows.items():
        work = r["train_total"] + r["proxy_total"]
        print(f"{m:<9} {r['runs']:>4} {r['calls']:>5} {r['proxies']:>7} {r['train']:>8.2f} {r['proxy']:>8.2f} "
              f"{r['proxy'] / r['train']:>11.2f} {r['proxy_total'] / work:>13.2f} "
              f"{r['proxy_total'] / (work + args.startup_s):>12.2f} {r['acc'][0]:>6.3f} {r['acc'][1]:>6.3f}")


if __name__ == "__main__":
    main()
