"""The export CLI: ``python -m raysearch.export --experiment DIR --trial ID --out FILE
[--card PATH] [--data-dir DIR]``.

Exit codes: 0 written (a trial without final evaluation too, with a warning line), 2 bad input
or an export that cannot be made or written (one line on stderr)."""
from __future__ import annotations

import argparse
import sys

from raysearch.export.scriptable import ExportError
from raysearch.export.trial import export_trial


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m raysearch.export",
                description="Write a trained trial as a self-contained TorchScript file and a JSON card.")
    p.add_argument("--experiment", required=True, help="<storage>/<name> of a search")
    p.add_argument("--trial", required=True, help="trial id (trials.parquet trial_id)")
    p.add_argument("--out", required=True, help="the TorchScript file to write, e.g. model.pt")
    p.add_argument("--card", default=None, help="where the JSON card goes (default: OUT.json)")
    p.add_argument("--data-dir", default=None,
                   help="data folder, for a data set whose shape only its files give (default: the experiment's)")
    args = p.parse_args(argv)
    try:
        result = export_trial(args.experiment, args.trial, args.out, args.card, args.data_dir,
                              warn=lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = result.card
    kind = "randomized" if card["randomized"] else "deterministic"
    print(f"trial {card['trial_id']} ({card['method']}, {card['architecture']}, {kind}): {_accuracies(card)}")
    print(f"model: {result.model}  ({card['file']['made_by']}; load with torch.jit.load)")
    print(f"card:  {result.card_path}")
    return 0


def _accuracies(card: dict) -> str:
    if not card["evaluated"]:
        return "no final evaluation"
    acc = card["accuracy"]
    shown = [f"{name.replace('_', ' ')} {acc[name]['value']:.3f}" for name in ("clean", "worst_seen", "union_unseen")
             if acc[name]["value"] is not None]
    return ", ".join(shown) + f" (n={acc['clean']['n']})"


if __name__ == "__main__":
    sys.exit(main())
