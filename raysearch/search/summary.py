"""The front a search prints when it ends: its completed trials' Pareto front on the per-epoch
proxy (clean vs robust accuracy), their searched hyperparameters, the hypervolume, and why each
failed trial failed. Read back from the results files, so it is what the files hold."""
from __future__ import annotations

import json
from pathlib import Path

from raysearch import store
from raysearch.pareto import hypervolume_2d, pareto_mask
from raysearch.schema import HP_PREFIX, Status


def front_table(rows: list[dict]) -> tuple[list[dict], float]:
    """The completed trials on the Pareto front, most robust first, and the hypervolume of all
    completed trials (reference point 0, 0)."""
    done = [r for r in rows if r["status"] == Status.COMPLETED]
    pts = [[r["clean_acc"], r["robust_acc"]] for r in done]
    if not pts:
        return [], 0.0
    mask = pareto_mask(pts)
    front = sorted([r for r, m in zip(done, mask) if m], key=lambda r: -r["robust_acc"])
    return front, hypervolume_2d(pts)


def report(exp_dir: Path) -> None:
    rows = store.read_rows(exp_dir / store.TRIALS)
    recorded = json.loads((exp_dir / store.EXPERIMENT).read_text())
    searched = list(recorded.get("search_space", {}))
    failed = [r for r in rows if r["status"] == Status.FAILED]
    front, hv = front_table(rows)
    eps = recorded["config"]["eps_eval"]
    print(f"\nPareto front: clean accuracy vs proxy robust accuracy (per image the worst of L∞ PGD-margin, "
          f"PGD-CE and, on deterministic predictors, APGD-T, {recorded['config']['eval_steps']} steps each) at "
          f"ε={eps:.4g} (validation split, per-epoch proxy), {len(front)} of "
          f"{sum(r['status'] == Status.COMPLETED for r in rows)} completed trials")
    if not front:
        print("  no completed trial")
    else:
        cols = ["trial_id", "clean_acc", "robust_acc", *searched]
        cells = [[r["trial_id"], f"{r['clean_acc']:.3f}", f"{r['robust_acc']:.3f}",
                  *[_fmt(r.get(HP_PREFIX + k)) for k in searched]] for r in front]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        print("  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for row in cells:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"hypervolume (reference point clean=0, robust=0): {hv:.4f}")
    for r in failed:
        print(f"  failed trial {r['trial_id']}: {r['error']}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
