"""Does the per-epoch proxy tell the search the truth? For each method, one model trained at its
default configuration (the worker's loop without Ray, ``bench/bare.py``), then on that one model:

* the old proxy: min(clean, PGD-CE) per image, one restart, 10 steps, the proxy's EOT, real
  gradient only (what the search maximized before the margin loss and BPDA were added);
* the untargeted proxy: per image the worst of PGD-CE and PGD-margin at 10 steps, through BPDA
  too (what the search maximized before the targeted runs were added);
* the proxy as the search runs it now (``raysearch.evaluate.proxy.proxy_eval``: the untargeted
  runs and APGD-T, each at the default steps);
* the final suite's worst case over seen attacks, with its 95% Wilson interval.

The proxies are measured on the validation subset the worker uses and the final suite on the
test split, as in a search. The gap (proxy − final worst-seen) is printed for every proxy, and
whether the current one falls inside the final number's interval. For a randomized predictor the
final clean and worst-seen accuracy are printed per call and as the ensemble vote of the
scoring calls, side by side.

    .venv/bin/python bench/proxy_gap.py                          # all seven methods, 8 epochs
    .venv/bin/python bench/proxy_gap.py --methods pgd_at,atop --epochs 4 --final-n 300
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from bare import bare_trial  # noqa: E402
from raysearch import data as data_mod  # noqa: E402
from raysearch.attacks import ATTACKS, core  # noqa: E402
from raysearch.config import ExperimentConfig  # noqa: E402
from raysearch.evaluate.proxy import proxy_eval  # noqa: E402
from raysearch.evaluate.runner import evaluate_predictor  # noqa: E402
from raysearch.stats import accuracy_interval  # noqa: E402
from trainables import REGISTRY  # noqa: E402
from trainables.common import eval_mode  # noqa: E402

DEFAULTS = ExperimentConfig(method="pgd_at")
UNTARGETED_STEPS = 10  # the untargeted proxy's steps before the targeted runs were added


def old_proxy(pred, x, y, eps: float, steps: int, eot: int, batch_size: int = 256) -> float:
    """The proxy before the margin loss and BPDA: per image min(clean, PGD-CE) per-call score."""
    attack = ATTACKS["pgd_ce"]
    params = {**attack.params, "steps": steps, "restarts": 1}
    calls = pred.calls(eot)
    robust = 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        clean = core.fraction_correct(pred.model, xb, yb, calls)
        with torch.enable_grad():
            x_adv = attack.fn(pred.model, xb, yb, eps, eot=calls, seed=i, **params)
        robust += torch.minimum(clean, core.fraction_correct(pred.model, x_adv, yb, calls)).sum().item()
    return robust / len(y)


def measure(method: str, args) -> dict:
    t0 = time.time()
    data = data_mod.load(args.dataset)
    spec = data.spec
    kept: dict = {}
    for _ in bare_trial(method, {}, {}, args.epochs, args.eval_size, DEFAULTS.eval_steps, DEFAULTS.eval_eot,
                        dataset=args.dataset, keep=kept):
        pass
    nets, cfg = kept["nets"], kept["cfg"]
    defense = REGISTRY[method]
    pred = defense.predictor(nets, cfg)
    vx, vy = data_mod.eval_subset(data.val, args.eval_size, seed=0)
    tx, ty = data_mod.eval_subset(data.test, args.final_n, seed=0)
    with eval_mode(*nets.values()):
        before = old_proxy(pred, vx, vy, spec.eps_eval, UNTARGETED_STEPS, DEFAULTS.eval_eot)
        untargeted = proxy_eval(pred, vx, vy, spec.eps_eval, UNTARGETED_STEPS, DEFAULTS.eval_eot,
                                attacks=("pgd_cw", "pgd_ce"), classes=spec.classes)[1] / len(vy)
        clean, robust, n = proxy_eval(pred, vx, vy, spec.eps_eval, DEFAULTS.eval_steps, DEFAULTS.eval_eot,
                                      classes=spec.classes)
        rep = evaluate_predictor(pred, tx, ty, spec, eot=DEFAULTS.eot_samples, seed=0,
                                 surrogate=nets.get("classifier"), extra=defense.extra_attacks(nets, cfg))
    worst = rep.accuracy("worst_seen")
    low, high = accuracy_interval(worst, rep.n)
    return {"method": method, "old": before, "untargeted": untargeted, "new": robust / n, "proxy_clean": clean / n, "final": worst,
            "low": low, "high": high, "n": rep.n, "clean": rep.clean_acc, "randomized": pred.randomized,
            "ensemble": dict(rep.ensemble), "flags": list(rep.flags), "seconds": time.time() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(REGISTRY))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=DEFAULTS.max_epochs)
    p.add_argument("--eval-size", type=int, default=DEFAULTS.eval_size)
    p.add_argument("--final-n", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"proxy_gap: {args.dataset}, {args.epochs} epochs at each method's defaults, proxy on {args.eval_size} "
          f"validation images, final suite on {args.final_n} test images; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    print(f"{'method':8s} {'CE only':>9s} {'untargeted':>10s} {'proxy':>9s} {'final worst-seen [95% CI]':>26s} "
          f"{'gap CE':>8s} {'gap untg':>8s} {'gap now':>8s} {'now in CI':>9s}  flags")
    rows = []
    for method in args.methods.split(","):
        r = measure(method, args)
        rows.append(r)
        inside = r["low"] <= r["new"] <= r["high"]
        print(f"{method:8s} {r['old']:9.3f} {r['untargeted']:10.3f} {r['new']:9.3f} {r['final']:9.3f} "
              f"[{r['low']:.3f}, {r['high']:.3f}]     {r['old'] - r['final']:+8.3f} {r['untargeted'] - r['final']:+8.3f} "
              f"{r['new'] - r['final']:+8.3f} {'yes' if inside else 'no':>9s}  "
              f"{';'.join(r['flags']) or '-'}  ({r['seconds']:.0f} s)", flush=True)
    for r in rows:
        if r["randomized"]:
            e = r["ensemble"]
            print(f"{r['method']}: per call clean {r['clean']:.3f}, worst-seen {r['final']:.3f}; ensemble vote of the "
                  f"scoring calls clean {e.get('clean_ensemble', float('nan')):.3f}, "
                  f"worst-seen {e.get('worst_seen_ensemble', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
