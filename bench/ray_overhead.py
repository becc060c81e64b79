"""What Ray costs a trial: the same training work (method, model, data, epochs, per-epoch proxy
evaluation) run as a bare PyTorch loop in this process and as one raysearch trial through the
real launcher (Ray Tune trial → Ray Train controller → one Ray Train worker), side by side,
alternating, ``--repeats`` times.

Prints per repeat: bare seconds, the trial's wall seconds (Tune's trial start to its driver's end),
the whole search call (plus ray.init/shutdown), their ratio, and where the trial's fixed start-up
went, from the marks the worker reports with its first epoch:

  driver   trial start → the Train worker process exists (Tune trial actor, imports,
           TorchTrainer, Train controller, worker placement group and process start)
  imports  worker process start → the worker loop is entered (Ray worker + torch + defense imports)
  setup    loop entry → first training step (data load, build, process group, loader)
  tail     last epoch's end → the driver returns (final report, checkpoint, shutdown)

Both sides use the same number of torch threads (a Ray worker with 1 CPU gets 1 thread). On a
shared machine whose load moves between the two sides, trust "trial/its own epochs" (the
trial's wall time over the worker's own epoch seconds, measured in the same minutes) more than
trial/bare.

    .venv/bin/python bench/ray_overhead.py                   # ≈ 60 s of work per side
    .venv/bin/python bench/ray_overhead.py --epochs 4 --repeats 1   # quick look
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from raysearch import components, data as data_mod, perf  # noqa: E402
from raysearch.config import ExperimentConfig, trial_config  # noqa: E402
from raysearch.evalproxy import proxy_eval  # noqa: E402
from trainables import REGISTRY  # noqa: E402
from trainables.base import StepContext  # noqa: E402
from trainables.common import eval_mode, frozen  # noqa: E402


def bare_trial(method: str, sampled: dict, sets: dict, epochs: int, eval_size: int, eval_steps: int,
               eval_eot: int = 10, dataset: str = "digits", eps_eval: float = 0.0, storage: str | None = None,
               opts: perf.PerfOptions = perf.PerfOptions(), device: str = "cpu"):
    """The worker loop's work without Ray, one epoch per ``next()``: yields the epoch's metrics
    (clean_acc, robust_acc, train_s, eval_s). Same defense code, loader, proxy evaluation."""
    device = torch.device(device)
    defense = REGISTRY[method]
    data = data_mod.load(dataset)
    spec = data.spec
    cfg = trial_config(method, spec, sampled, sets, epochs, "auto")
    torch.manual_seed(cfg.seed * 1000)
    nets = defense.build(cfg, spec)
    for m in nets.values():
        m.to(device)

    def batches(batch_size):
        perm = torch.randperm(len(data.train.y))
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            yield data.train.images(idx).to(device), data.train.y[idx].to(device)

    comps = defense.pretrained(cfg, spec)
    if comps:
        components.ensure(method, comps, nets, cfg, spec, Path(storage or tempfile.mkdtemp()), batches, device)
    roles = defense.trainable(cfg)
    for role, m in nets.items():
        if role in roles:
            perf.prepare_module(m, opts).train()
        else:
            frozen(m)
    loader = perf.make_loader(data.train.x, data.train.y, cfg.batch_size, device, opts, seed=cfg.seed)
    steps = max(len(loader), 1)
    optims, scheds = defense.optimizers({r: nets[r] for r in roles}, cfg, cfg.epochs * steps)
    eval_x, eval_y = data_mod.eval_subset(data.val, eval_size, seed=0)
    eval_x, eval_y = eval_x.to(device), eval_y.to(device)
    ctx = StepContext(nets=nets, raw=nets, opts=optims, scheds=scheds, cfg=cfg, spec=spec, epoch=0, step=0,
                      steps_per_epoch=steps, device=device, autocast=perf.autocast(device, opts))
    for epoch in range(cfg.epochs):
        ctx.epoch = epoch
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        t0 = time.time()
        for xb, yb in loader:
            x = xb.to(device).float().div_(data.train.scale)
            if data.augment:
                x = data_mod.augment_batch(x, data.flip)
            defense.train_step(ctx, perf.prepare_input(x, opts), yb.to(device))
            ctx.step += 1
        t1 = time.time()
        pred = defense.predictor(nets, cfg)
        with eval_mode(*nets.values()):
            clean, robust, n = proxy_eval(pred, eval_x, eval_y, eps_eval or spec.eps_eval, eval_steps, eval_eot)
        for role, m in nets.items():
            if role not in roles:
                m.eval()
        yield {"epoch": epoch + 1, "clean_acc": clean / n, "robust_acc": robust / n,
               "train_s": t1 - t0, "eval_s": time.time() - t1}


def run_bare(args) -> float:
    t0 = time.time()
    for _ in bare_trial(args.method, {}, dict(args.sets), args.epochs, args.eval_size, args.eval_steps):
        pass
    return time.time() - t0


def run_ray(args, root: Path, name: str) -> dict:
    from raysearch import launcher, store

    exp = ExperimentConfig(method=args.method, num_samples=1, max_epochs=args.epochs, storage_path=str(root),
                           name=name, sets=tuple(args.sets), eps_eval=data_mod.SPECS["digits"].eps_eval,
                           eval_size=args.eval_size, eval_steps=args.eval_steps, final_eval=False,
                           cpus_per_worker=args.threads)
    # the search space is fixed to the defaults so both sides train the same hyperparameters
    t0 = time.time()
    launcher.run(exp)
    call_s = time.time() - t0
    row = store.read_rows(root / name / store.TRIALS)[0]
    results = [json.loads(line) for p in (root / name).glob("*/result.json") for line in p.read_text().splitlines()]
    epochs = sorted((r for r in results if "train_started_at" in r or "train_s" in r), key=lambda r: r["epoch"])
    first = next(r for r in epochs if "train_started_at" in r)
    work = sum(r["train_s"] + r["eval_s"] for r in epochs if "train_s" in r)
    return {"call_s": call_s, "trial_s": row["finished_at"] - row["started_at"],
            "work_s": work, "status": row["status"],
            "driver": first["worker_started_at"] - row["started_at"],
            "imports": first["loop_started_at"] - first["worker_started_at"],
            "setup": first["train_started_at"] - first["loop_started_at"],
            "startup_s": row["startup_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="pgd_at")
    p.add_argument("--epochs", type=int, default=40, help="epochs per side (default 40: ≈60 s of PGD-AT on digits)")
    p.add_argument("--eval-size", type=int, default=180)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads = CPUs of the Ray worker (default 1)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from raysearch.config import parse_set

    args.sets = parse_set(args.sets, args.method)
    torch.set_num_threads(args.threads)
    print(f"ray_overhead: {args.method} on digits, {args.epochs} epochs, eval {args.eval_size} images × "
          f"PGD-{args.eval_steps}, {args.threads} thread(s); {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare = run_bare(args)
            ray_r = run_ray(args, Path(tmp), f"overhead{i}")
            rows.append((bare, ray_r))
            print(f"[{i + 1}] bare {bare:.1f}s | trial {ray_r['trial_s']:.1f}s (worker's epochs {ray_r['work_s']:.1f}s), "
                  f"search call {ray_r['call_s']:.1f}s | ratio trial/bare {ray_r['trial_s'] / bare:.3f}, "
                  f"training (worker's epochs)/bare {ray_r['work_s'] / bare:.3f}, "
                  f"trial/its own epochs {ray_r['trial_s'] / ray_r['work_s']:.3f}, "
                  f"call/bare {ray_r['call_s'] / bare:.3f} | start-up {ray_r['startup_s']:.1f}s = driver "
                  f"{ray_r['driver']:.1f} + imports {ray_r['imports']:.1f} + setup {ray_r['setup']:.1f}; "
                  f"tail {ray_r['trial_s'] - ray_r['startup_s'] - ray_r['work_s']:.1f}s; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    ratios = [r["trial_s"] / b for b, r in rows]
    fixed = [r["trial_s"] - b for b, r in rows]
    print(f"median ratio of the training work, worker's epochs/bare: "
          f"{statistics.median(r['work_s'] / b for b, r in rows):.3f}")
    print(f"median ratio trial/bare {statistics.median(ratios):.3f}; fixed cost per trial (trial − bare) "
          f"{statistics.median(fixed):.1f}s; start-up to first step {statistics.median(r['startup_s'] for _, r in rows):.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
