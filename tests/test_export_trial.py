"""Exporting a trained trial (raysearch.export.trial): the file, loaded in a fresh process that
imports torch and nothing of this project, reproduces the clean accuracy the card records;
atop's exported pipeline stays random with its mean accuracy inside the card's interval; atld's
test-time step gives the project's logits."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from raysearch import data as data_mod
from raysearch import schema, store, trial_io
from raysearch.config import default_config
from raysearch.evaluate.trials import evaluate_experiment
from raysearch.export.scriptable import ExportError
from raysearch.export.trial import export_trial
from raysearch.schema import Status
from trainables import REGISTRY
from trainables.atop import fit_purifier

SUBSET = 60

# Run in a fresh interpreter: loads the exported file with torch alone, calls it ``calls`` times
# on the saved images, saves the logits, and says which modules it imported.
LOAD = textwrap.dedent("""
    import json, sys
    import torch
    model = torch.jit.load(sys.argv[1], map_location="cpu")
    images = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        logits = torch.stack([model(images) for _ in range(int(sys.argv[4]))])
    torch.save(logits, sys.argv[3])
    print(json.dumps({"project_modules": sorted(m for m in sys.modules
                                                if m.split(".")[0] in ("raysearch", "trainables"))}))
""")


def run_exported(model_path, images: torch.Tensor, tmp_path, calls: int = 1) -> torch.Tensor:
    """The exported model's logits (calls × N × K), computed in a fresh process."""
    torch.save(images, tmp_path / "images.pt")
    proc = subprocess.run([sys.executable, "-c", LOAD, str(model_path), str(tmp_path / "images.pt"),
                           str(tmp_path / "logits.pt"), str(calls)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"project_modules": []}
    return torch.load(tmp_path / "logits.pt", weights_only=True)


def subset_of(card) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images the card says the final evaluation used."""
    evaluation = card["final_evaluation"]
    return data_mod.eval_subset(data_mod.load(card["dataset"]).test, evaluation["n"], evaluation["subset"]["seed"])


def add_trial(exp_dir, trial_id: str, method: str, nets, cfg) -> None:
    """A completed trial with its checkpoint in <exp_dir>/train/<trial_id>/, as a search stores it."""
    folder = exp_dir / "train" / trial_id / "checkpoint_000001"
    trial_io.save(folder, nets=nets, opts={}, scheds={}, epoch=1, method=method, dataset="digits", cfg=cfg)
    row = schema.trial_row(experiment=exp_dir.name, trial_id=trial_id, method=method, dataset="digits",
                           arch="auto", eps_eval=0.2, num_workers=1, started_at=0.0, config=dataclasses.asdict(cfg))
    row.update(status=Status.COMPLETED, error="", clean_acc=0.9, robust_acc=0.5, epochs=2,
               checkpoint=trial_io.relative_to_experiment(folder, exp_dir))
    store.write_trials(exp_dir, store.read_rows(exp_dir / store.TRIALS) + [row])


def _with_classifier(method: str, trained, digits, **changes):
    """``method``'s networks for digits with the trained standard classifier."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(default_config(method, digits.spec), **changes)
    nets = REGISTRY[method].build(cfg, digits.spec)
    nets["classifier"].load_state_dict(trained["standard"][1]["classifier"].state_dict())
    return cfg, nets


@pytest.mark.parametrize("trial_id", ["t0", "t1"])  # standard, PGD-AT
def test_a_fresh_process_reproduces_the_recorded_clean_accuracy(trial_id, experiment, tmp_path):
    evaluate_experiment(experiment, ["t0", "t1"], subset=SUBSET, attacks=["fgsm"], device="cpu", front=False,
                        threads=1)
    result = export_trial(experiment, trial_id, tmp_path / "out" / "model.pt")
    card = json.loads(result.card_path.read_text())
    assert result.card_path == tmp_path / "out" / "model.pt.json" and card["file"]["name"] == "model.pt"
    assert card["evaluated"] and not card["randomized"] and card["final_evaluation"]["n"] == SUBSET
    x, y = subset_of(card)
    (logits,) = run_exported(result.model, x, tmp_path)
    correct = int((logits.argmax(1) == y).sum())
    assert correct == card["accuracy"]["clean"]["correct"]
    assert correct / SUBSET == pytest.approx(card["clean_acc"])
    low, high = card["accuracy"]["clean"]["ci95"]
    assert low <= card["clean_acc"] <= high


def test_exported_atop_stays_random_and_its_mean_accuracy_is_in_the_interval(tmp_path, trained, digits):
    cfg, nets = _with_classifier("atop", trained, digits, noise_sigma=0.1, missing_rate=0.1, pretrain_epochs=4)
    fit_purifier(nets, cfg, digits.spec, lambda bs: data_mod.shuffled_batches(digits.train, bs), "cpu")
    exp_dir = tmp_path / "exp"
    add_trial(exp_dir, "a0", "atop", nets, cfg)
    evaluate_experiment(exp_dir, ["a0"], subset=SUBSET, eot=4, attacks=["fgsm"], device="cpu", front=False,
                        threads=1)
    result = export_trial(exp_dir, "a0", tmp_path / "atop.pt")
    card = result.card
    assert card["randomized"] and "two calls on the same images differ" in card["calling"]
    assert "gradients average 4 random draws" in card["final_evaluation"]["randomized_scoring"]
    assert "fraction of 20 fresh calls" in card["final_evaluation"]["randomized_scoring"]
    x, y = subset_of(card)
    logits = run_exported(result.model, x, tmp_path, calls=20)
    assert not torch.equal(logits[0], logits[1])
    mean_accuracy = float((logits.argmax(2) == y).float().mean())
    low, high = card["accuracy"]["clean_per_draw"]["ci95"]
    assert low <= mean_accuracy <= high, (mean_accuracy, card["accuracy"]["clean_per_draw"])


def test_exported_atld_imt_gives_the_projects_logits(tmp_path, trained, digits):
    cfg, nets = _with_classifier("atld", trained, digits, imt="banded", latent="features")
    exp_dir = tmp_path / "exp"
    add_trial(exp_dir, "d0", "atld", nets, cfg)
    warnings = []
    result = export_trial(exp_dir, "d0", tmp_path / "atld.pt", warn=warnings.append)
    assert len(warnings) == 1 and "no final evaluation" in warnings[0]
    assert result.card["evaluated"] is False and result.card["clean_acc"] is None
    assert result.card["hyperparameters"]["imt"] == "banded" and result.card["number_forward_passes"] == 2
    x, _ = data_mod.eval_subset(digits.test, 40)
    (exported,) = run_exported(result.model, x, tmp_path)
    _, _, _, predictor = trial_io.rebuild(exp_dir / "train" / "d0" / "checkpoint_000001", digits.spec)
    with torch.no_grad():
        torch.testing.assert_close(exported, predictor.model(x), rtol=1e-5, atol=1e-5)


def test_the_recorded_data_spec_is_used_without_reading_the_data(tmp_path, trained, digits):
    cfg, nets, _ = trained["standard"]
    exp_dir = tmp_path / "exp"
    add_trial(exp_dir, "u0", "standard", nets, cfg)
    rows = store.read_rows(exp_dir / store.TRIALS)
    rows[0]["dataset"] = f"npz:{tmp_path / 'gone.npz'}"  # a user's data set no longer there
    store.write_trials(exp_dir, rows)
    with pytest.raises(ExportError, match="data set is needed for its image shape"):
        export_trial(exp_dir, "u0", tmp_path / "m.pt")
    store.write_json(exp_dir / store.EXPERIMENT, {"data_spec": dataclasses.asdict(digits.spec)})
    card = export_trial(exp_dir, "u0", tmp_path / "m.pt").card
    assert card["data_spec"]["height"] == 8 and card["dataset"].startswith("npz:")


def test_a_checkpoint_this_code_cannot_rebuild_is_one_line(tmp_path, trained):
    cfg, nets, _ = trained["standard"]
    exp_dir = tmp_path / "exp"
    add_trial(exp_dir, "s0", "standard", nets, cfg)
    meta = exp_dir / "train" / "s0" / "checkpoint_000001" / trial_io.META
    meta.write_text(meta.read_text().replace('"standard"', '"retired_method"'))
    with pytest.raises(ExportError, match="cannot rebuild its predictor") as info:
        export_trial(exp_dir, "s0", tmp_path / "m.pt")
    assert len(str(info.value).splitlines()) == 1
