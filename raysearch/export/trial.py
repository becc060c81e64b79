"""Exporting one trial of an experiment: find it, rebuild its predictor from its checkpoint
(``raysearch.trial_io.rebuild``, on the CPU), make it a TorchScript module
(``raysearch.export.scriptable``), check it against the predictor, and write the module and
its card (``raysearch.export.card``), each atomically."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from raysearch import store, trial_io
from raysearch.export.card import build_card, finite_number
from raysearch.export.scriptable import ExportError, export_predictor, quiet_jit, verify
from trainables.nets import resolve_arch
from trainables.spec import DataSpec


@dataclass
class ExportResult:
    model: Path
    card_path: Path
    card: dict[str, Any]


def export_trial(exp_dir, trial_id: str, out, card_path=None, data_dir: str | None = None,
                 warn: Callable[[str], None] | None = None) -> ExportResult:
    """Write trial ``trial_id`` of the experiment in ``exp_dir`` as a TorchScript file ``out``
    and its card as JSON (``card_path``, default ``out`` + ".json"). A trial without a final
    evaluation is exported with a card that says so, and ``warn`` is told. Raises ExportError
    (one line) for a missing experiment or trial, a trial without checkpoint, data whose spec
    cannot be had, a predictor that cannot be exported, and an output that cannot be written."""
    exp_dir, out = Path(exp_dir), Path(out)
    card_path = Path(card_path) if card_path else out.with_name(out.name + ".json")
    row = _trial_row(exp_dir, trial_id)
    folder = trial_io.checkpoint_folder(exp_dir, row["checkpoint"])
    if folder is None:
        raise ExportError(f"trial {trial_id}: checkpoint {row['checkpoint']} not found in {exp_dir}")
    for path in (out, card_path):
        _check_writable(path)
    recorded = _recorded(exp_dir)
    spec = _spec(row, recorded, data_dir)
    if finite_number(row.get("final_clean_acc")) is None and warn is not None:
        warn(f"trial {trial_id} has no final evaluation: exported with a card that says so and gives no test "
             f"accuracy (python -m raysearch.evaluate --experiment {exp_dir} --trials {trial_id} --only-trials "
             f"evaluates it)")
    try:
        _, cfg, _, predictor = trial_io.rebuild(folder, spec, "cpu")
    except (ImportError, KeyError, TypeError, ValueError, RuntimeError) as e:
        # an unknown method or field, a user's architecture that no longer imports, weights of
        # another shape: the checkpoint does not fit this code
        raise ExportError(f"trial {trial_id}: cannot rebuild its predictor from {folder}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]) from None
    exported = export_predictor(predictor, spec.channels, spec.size)
    diff = verify(exported, predictor, spec.channels, spec.size)
    evals = [r for r in store.read_rows(exp_dir / store.EVALS) if r.get("trial_id") == trial_id]
    config = trial_io.load_meta(folder)["config"]
    card = build_card(experiment=exp_dir.resolve().name, row=row, config=config, spec=spec,
                      architecture=resolve_arch(cfg.arch, spec), exported=exported,
                      randomized=predictor.randomized, evals=evals, recorded=recorded, model_file=out.name,
                      max_logit_diff=diff)
    try:
        with quiet_jit():
            store.atomic_write_bytes(out, lambda tmp: torch.jit.save(exported.module, tmp))
        store.write_json(card_path, card)
    except OSError as e:
        raise ExportError(f"cannot write {e.filename or out}: {e.strerror or e}") from None
    return ExportResult(out, card_path, card)


def _trial_row(exp_dir: Path, trial_id: str) -> dict[str, Any]:
    if not (exp_dir / store.TRIALS).is_file():
        raise ExportError(f"{exp_dir / store.TRIALS} not found: pass --experiment <storage>/<name> of a search")
    by_id = {r["trial_id"]: r for r in store.read_rows(exp_dir / store.TRIALS)}
    if trial_id not in by_id:
        raise ExportError(f"unknown trial {trial_id!r}; known: {', '.join(sorted(by_id)) or 'none'}")
    row = by_id[trial_id]
    if not row.get("checkpoint"):
        why = f" ({row['status']}: {row['error']})" if row.get("error") else f" ({row.get('status')})"
        raise ExportError(f"trial {trial_id} has no checkpoint to export{why}")
    return row


def _recorded(exp_dir: Path) -> dict[str, Any]:
    """experiment.json as a dict ({} if absent or unreadable: the card then lacks its revision)."""
    try:
        obj = json.loads((exp_dir / store.EXPERIMENT).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _spec(row: dict[str, Any], recorded: dict[str, Any], data_dir: str | None) -> DataSpec:
    """The trial's data spec: as experiment.json recorded it, else the data set's own (a
    built-in one's without reading it; a user's is read)."""
    from raysearch import data as data_mod

    fields = recorded.get("data_spec")
    if isinstance(fields, dict):
        try:
            return DataSpec(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"])})
        except (TypeError, KeyError):
            pass  # recorded by another version of DataSpec: take the data set's own
    data_dir = data_dir or recorded.get("config", {}).get("data_dir", "data")
    try:
        return data_mod.describe(row["dataset"], data_dir, row.get("eps_eval") or None)
    except data_mod.DataError as e:
        raise ExportError(f"the trial's data set is needed for its image shape: {e}") from None


def _check_writable(path: Path) -> None:
    """Fail now, before any work, where ``path`` cannot be written (its folder is made)."""
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None
